"""Use a plugin strategy exactly like NNI's own: swap one line in an existing NasExperiment.

    python examples/python_api.py
"""
from nni.nas.experiment import NasExperiment

from nni_plugins.datasets import build_datasets
from nni_plugins.evaluators import build_evaluator
from search_spaces.digits import DigitsCellSpace
from strategies import DrNAS  # or GAEA(), TETLO(); GOAL()/NASGEM() for multi-trial runs


def main() -> None:
    splits = build_datasets("digits", seed=0)
    evaluator = build_evaluator(splits, kind="search", max_epochs=5, output_dir="runs/python-api")
    experiment = NasExperiment(DigitsCellSpace(), evaluator, DrNAS())
    experiment.run()
    print(experiment.export_top_models(formatter="dict")[0])


if __name__ == "__main__":
    main()
