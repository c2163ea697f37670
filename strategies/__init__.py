"""The five NAS algorithms as NNI 3.0 strategies.

Multi-trial (exploration): :class:`GOAL`, :class:`NASGEM`.
One-shot (weight sharing): :class:`GAEA`, :class:`DrNAS`, :class:`TETLO`.
"""
import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)

from .goal import GOAL
from .drnas import DrNAS
from .gaea import GAEA
from .nasgem import NASGEM
from .tetlo import TETLO

__all__: list[str] = ["GOAL", "DrNAS", "GAEA", "NASGEM", "TETLO"]
