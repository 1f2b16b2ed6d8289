"""Ray Tune sweep over a training stage (params.yaml `tune:`; not a DVC stage): every trial runs that stage's
own DeepSpeed training (`pipelines.train.run_section`). How a sweep runs, resumes and is tracked:
`mlops.tuning`.

    python -m pipelines.tune                        # local Ray, or the cluster in RAY_ADDRESS
    python -m pipelines.tune --address 10.0.0.1:6379 --num-samples 16
    python -m pipelines.tune --fresh                # delete the sweep's folder and start over
"""

from __future__ import annotations

from mlops.tuning import TuneSettings, run_sweep
from pipelines.params import ParamsError, load_params, parse_section, stage_arguments
from pipelines.train import TrainSection, run_section


def main() -> None:
    parser = stage_arguments(__doc__, tracking=False)
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-samples", type=int, help="override tune.num_samples (a new sweep only)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--restore", action="store_true", help="resume the sweep; fail if there is none to resume")
    group.add_argument("--fresh", action="store_true", help="delete the sweep's folder first and start over")
    args = parser.parse_args()
    params = load_params(args.params)
    settings = parse_section(TuneSettings, params.get("tune"), "tune")
    base = params.get(settings.stage)
    if not isinstance(base, dict):
        raise ParamsError(f"{args.params}: no section '{settings.stage}' (tune.stage)")
    parse_section(TrainSection, base, settings.stage)  # the base every trial starts from, checked before Ray starts
    try:
        run_sweep(settings, base, run_section, args.address, args.num_samples, args.restore, args.fresh)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(f"tune: {err}") from None


if __name__ == "__main__":
    main()
