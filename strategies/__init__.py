"""The five NAS algorithms as NNI 3.0 strategies.

Multi-trial (exploration): :class:`GOAL`, :class:`NASGEM`.
One-shot (weight sharing): :class:`GAEA`, :class:`DrNAS`, :class:`TETLO`; a one-shot search whose loss or
architecture went NaN or infinite stops with :class:`NonFiniteError`.
"""
import nni_compat  # noqa: F401  (the NNI 3.0 fixes, bottom layer)

from .goal import GOAL
from .drnas import DrNAS
from .gaea import GAEA
from .nasgem import NASGEM
from .oneshot_common import NonFiniteError
from .tetlo import TETLO

__all__: list[str] = ["GOAL", "DrNAS", "GAEA", "NASGEM", "TETLO", "NonFiniteError"]
