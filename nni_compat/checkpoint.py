"""``NasExperiment``'s checkpoint: loading it under torch >= 2.6, keeping it when a resume fails,
and writing it after each finished trial."""
from __future__ import annotations

import logging
import weakref
from pathlib import Path

from .engine import ENGINE
from .registry import patch

_logger = logging.getLogger(__name__)

_EXPERIMENT = 'nni.nas.experiment.experiment:NasExperiment'


def fix_torch_load_weights_only() -> None:
    """``TorchSerializer.load`` (``nni/nas/utils/serializer.py:148``) calls ``torch.load`` without
    ``weights_only``; torch >= 2.6 defaults it to ``True`` and refuses the pickled strategy state
    (e.g. ``nni.nas.strategy.evolution.Individual``), so ``NasExperiment.resume()`` fails with
    ``UnpicklingError``. The checkpoint is NNI's own file, so it is loaded with
    ``weights_only=False``."""
    def make(original):
        def load(self, path: Path):
            import torch
            from nni.nas.utils.serializer import _find_path_with_prefix
            path = _find_path_with_prefix(path, self.suffix)
            return torch.load(str(path), map_location=self._map_location, weights_only=False)
        load.__doc__ = original.__doc__
        return load

    patch('torch_load_weights_only', 'nni.nas.utils.serializer:TorchSerializer.load', make)


def fix_failed_resume_keeps_checkpoint() -> None:
    """``NasExperiment.stop`` (``nni/nas/experiment/experiment.py:278``) always calls
    ``save_checkpoint``. When ``resume()`` failed before the strategy state was loaded (e.g. the
    ``torch.load`` error above), that overwrites ``checkpoint/state.ckpt`` with the fresh, empty
    strategy state and the search is lost. A resumed experiment now writes its state only after
    ``load_checkpoint`` has loaded it."""
    def make_load(original):
        def load_checkpoint(self) -> None:
            original(self)
            if self._engine is not None:
                # The state (or its absence) has been read: saving from now on keeps the history.
                self._nni_plugins_resume_pending = False
        load_checkpoint.__doc__ = original.__doc__
        return load_checkpoint

    def make_start(original):
        def _start_engine_and_strategy(self) -> None:
            self._nni_plugins_resume_pending = self._action == 'resume'
            return original(self)
        return _start_engine_and_strategy

    def make_save(original):
        def save_checkpoint(self) -> None:
            if getattr(self, '_nni_plugins_resume_pending', False):
                _logger.warning('Resume of experiment %s did not load its checkpoint; the checkpoint in %s '
                                'is kept as it was.', self.id, self._checkpoint_directory)
                return
            original(self)
        save_checkpoint.__doc__ = original.__doc__
        return save_checkpoint

    patch('failed_resume_keeps_checkpoint', f'{_EXPERIMENT}.load_checkpoint', make_load)
    patch('failed_resume_keeps_checkpoint', f'{_EXPERIMENT}._start_engine_and_strategy', make_start)
    patch('failed_resume_keeps_checkpoint', f'{_EXPERIMENT}.save_checkpoint', make_save)


def fix_checkpoint_after_each_trial() -> None:
    """``NasExperiment`` saves its checkpoint before the strategy starts and in ``stop()`` only
    (``nni/nas/experiment/experiment.py:226,278``). A driver that dies mid-search (SIGKILL, a job
    time limit) leaves the checkpoint of the start, so ``resume()`` forgets every finished trial and
    the strategy samples them again. The engine created by ``NasExperiment.execution_engine_factory``
    now saves the experiment checkpoint after each ``TrainingEnd`` event has reached the strategy
    (``ExecutionEngine.dispatch_model_event``)."""
    def make_factory(original):
        def execution_engine_factory(self, config):
            engine = original(self, config)
            experiment = weakref.ref(self)

            def save() -> None:
                if experiment() is not None:
                    experiment().save_checkpoint()
            engine._nni_plugins_after_training_end = save
            return engine
        execution_engine_factory.__doc__ = original.__doc__
        return execution_engine_factory

    def make_dispatch(original):
        def dispatch_model_event(self, event, **kwargs):
            from nni.nas.execution.event import ModelEventType
            result = original(self, event, **kwargs)
            save = getattr(self, '_nni_plugins_after_training_end', None)
            if save is not None and getattr(event, 'event_type', None) == ModelEventType.TrainingEnd:
                save()
            return result
        dispatch_model_event.__doc__ = original.__doc__
        return dispatch_model_event

    patch('checkpoint_after_each_trial', f'{_EXPERIMENT}.execution_engine_factory', make_factory)
    patch('checkpoint_after_each_trial', f'{ENGINE}.dispatch_model_event', make_dispatch)
