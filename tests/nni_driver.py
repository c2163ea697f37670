"""Driver subprocess for the compat tests: runs (or resumes) one multi-trial NAS experiment on
:class:`tests.nni_harness.TinySpace` and writes what the strategy, ``export_top_models()`` and the
NNI manager's REST API say about every trial to a JSON file.

Usage: ``python -m tests.nni_driver --workdir DIR --port P --exp-id ID [--resume] [--unpatch a,b] ...``
(started by :class:`tests.nni_harness.Sandbox`, which isolates HOME and NNI_CONFIG_DIR).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import nni_compat as compat  # applies the fixes
import nni
from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution.event import ModelEventType
from nni.nas.experiment import NasExperiment, NasExperimentConfig

from tests.nni_harness import TinySpace, UntracedBox, evaluate_model, evaluate_with_untraced, rest_get


def make_strategy(name: str, seed: int, population: int):
    if name == 'evolution':
        from nni.nas.strategy import RegularizedEvolution
        return RegularizedEvolution(population_size=population, sample_size=2, seed=seed)
    if name == 'random':
        from nni.nas.strategy import Random
        return Random(seed=seed)
    import strategies
    if name == 'GOAL':
        return strategies.GOAL(n_init=3, batch_size=2, top_k=2, ascent_steps=5, hidden=8, num_layers=1,
                               ensemble=1, epochs=5, seed=seed)
    if name == 'NASGEM':
        return strategies.NASGEM(num_init=3, batch_size=2, pool_size=16, pretrain_size=16, hidden_dim=8,
                                 num_layers=1, embedding_dim=4, encoder_steps=5, encoder_pairs=8,
                                 predictor_hidden=8, predictor_epochs=5, seed=seed)
    raise ValueError(f'unknown strategy {name!r}')


def strategy_records(strategy) -> list | None:
    """(sample, metric) pairs the strategy itself keeps, where it exposes them."""
    population = getattr(strategy, '_population', None)
    if population is not None:
        return [[dict(ind.x), float(ind.y)] for ind in population]
    history = getattr(strategy, '_history', None)      # GOAL, NASGEM: (graph, sample, metric)
    if history is not None:
        return [[dict(entry[-2]), float(entry[-1])] for entry in history]
    return None


def rest_trials(port: int) -> list[dict]:
    rows = []
    for trial in rest_get(port, '/trial-jobs'):
        hps = trial.get('hyperParameters') or []
        record = nni.load(hps[0], ignore_comments=False) if hps else None
        final = None
        for metric in trial.get('finalMetricData') or []:
            value = nni.load(metric['data'], ignore_comments=False)
            if isinstance(value, str):
                value = nni.load(value, ignore_comments=False)
            final = {'value': value, 'parameter_id': metric.get('parameterId')}
        rows.append({
            'id': trial['trialJobId'],
            'sequence': trial.get('sequenceId'),
            'status': trial['status'],
            'parameter_id': record['parameter_id'] if record else None,
            'sample': dict(record['parameters'].sample) if record else None,
            'final': final,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--workdir', required=True)
    parser.add_argument('--out')
    parser.add_argument('--port', type=int, required=True)
    parser.add_argument('--exp-id', required=True)
    parser.add_argument('--strategy', default='evolution')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--concurrency', type=int, default=3)
    parser.add_argument('--trials', type=int, default=8)
    parser.add_argument('--sleep', type=float, default=0.0, help='seconds each trial sleeps')
    parser.add_argument('--untraced', action='store_true', help='evaluator holds an untraced object')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--unpatch', default='', help='comma-separated compat fixes to undo')
    parser.add_argument('--top-k', type=int, default=3)
    parser.add_argument('--population', type=int, default=4, help='RegularizedEvolution population size')
    parser.add_argument('--delay-first', type=float, default=0.0,
                        help='the trial of sequence 0 starts this many seconds late, so that later trials ask '
                             'for their parameter first (forces the hand-out race deterministically)')
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO)
    for name in filter(None, args.unpatch.split(',')):
        compat.revert(name)

    if args.untraced:
        evaluator = FunctionalEvaluator(evaluate_with_untraced, box=UntracedBox(b'\xff' * 48), sleep=args.sleep)
    else:
        evaluator = FunctionalEvaluator(evaluate_model, sleep=args.sleep)
    strategy = make_strategy(args.strategy, args.seed, args.population)
    config = NasExperimentConfig('ts', 'simplified', 'local')
    config.trial_concurrency = args.concurrency
    config.max_trial_number = args.trials
    config.experiment_working_directory = args.workdir
    if args.delay_first:
        config._trial_command_params = {'envs': f'[ "$NNI_TRIAL_SEQ_ID" = 0 ] && sleep {args.delay_first};'}
    exp = NasExperiment(TinySpace(), evaluator, strategy, config, id=args.exp_id)

    # Instrumentation (not a fix): record every TrainingEnd event the engine hands to the strategy.
    training_ends = []
    make_engine = exp.execution_engine_factory

    def recording_engine_factory(engine_config):
        engine = make_engine(engine_config)

        def record(event):
            training_ends.append([dict(event.model.sample), str(event.status.value), event.model.metric])
        engine.register_model_event_callback(ModelEventType.TrainingEnd, record)
        return engine
    exp.execution_engine_factory = recording_engine_factory

    started = time.time()
    if args.resume:
        exp.resume(port=args.port)
    else:
        exp.run(port=args.port)
    result = {
        'status': exp.get_status(),
        'seconds': time.time() - started,
        'export': [dict(s) for s in exp.export_top_models(top_k=args.top_k, formatter='dict')],
        'records': strategy_records(strategy),
        'training_ends': training_ends,
        'trials': rest_trials(args.port),
        'manager_pid': exp._proc.pid if exp._proc is not None else None,
    }
    exp.stop()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == '__main__':
    sys.exit(main())
