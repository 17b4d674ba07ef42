"""Command line: ``python -m srtlab {fit,eval,label,prepare,plot,export} [key=value ...]``.

``fit``, ``eval`` and ``label`` take Hydra overrides (``experiment=srt rollout.n=16 algorithm=grpo ...``) and
Hydra's own flags (``--cfg job`` prints the composed config, ``-m`` sweeps, ``--config-dir DIR`` adds a folder of
the user's own configs, e.g. ``DIR/experiment/mine.yaml`` for ``experiment=mine``).
"""

from __future__ import annotations

import os
import sys

USAGE = """usage: python -m srtlab COMMAND [overrides]

commands:
  fit       train (e.g. `python -m srtlab fit experiment=srt`)
  eval      evaluate the base model or a checkpoint (`ckpt_path=...`) on the held-out sets
  label     frozen-teacher labels: majority of label.k samples per training prompt (for reward=teacher)
  prepare   fetch and convert the built-in model and data once (fit/eval do it on first use too)
  export    a checkpoint as a Hugging Face model folder: `python -m srtlab export CKPT OUT_DIR [--adapter-only]`
  plot      plot a run's metrics: `python -m srtlab plot RUN_DIR [METRIC ...]`
  report    one HTML page about runs (seeds aggregated): `python -m srtlab report RUN [RUN ...] [--out FILE]`
"""


def _hydra_task(config_name: str, task):
    import hydra

    from srtlab import config_dir
    from srtlab.train import register_resolvers
    from srtlab.validate import CONFIG_ERROR_EXIT, check_command_line

    register_resolvers()
    # Check before hydra.main: Hydra creates the run folder (.hydra/, the log) before the task runs.
    error = check_command_line(str(config_dir()), config_name, sys.argv[1:])  # the folder hydra.main reads
    if error:
        print("\n".join(f"config error: {line}" for line in error.splitlines()), file=sys.stderr)
        raise SystemExit(CONFIG_ERROR_EXIT)

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def main(cfg) -> None:
        task(cfg)

    main()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if "=" in command and os.environ.get("SRTLAB_COMMAND"):  # a rank started by Lightning's launcher, which
        command, rest = os.environ["SRTLAB_COMMAND"], argv  # re-runs `python -m srtlab` with the overrides only
    os.environ["SRTLAB_COMMAND"] = command
    sys.argv = [f"srtlab {command}", *rest]  # Hydra reads its overrides from sys.argv
    if command == "fit":
        from srtlab.train import fit

        _hydra_task("fit", fit)
    elif command == "eval":
        from srtlab.train import evaluate

        _hydra_task("eval", evaluate)
    elif command == "label":
        from srtlab.label import label

        _hydra_task("label", label)
    elif command == "prepare":
        from srtlab.data.files import BUILTINS, builtin_file
        from srtlab.models.load import BUILTIN_MODELS, prepare_builtin

        for name in BUILTIN_MODELS:
            print(f"model {name}: {prepare_builtin(name)}")
        for name in BUILTINS:
            print(f"data {name}: {builtin_file(name)}")
    elif command == "export":
        import argparse

        from srtlab.export import export_checkpoint

        parser = argparse.ArgumentParser(prog="python -m srtlab export",
                                         description="Write a fit checkpoint as a Hugging Face model folder.")
        parser.add_argument("ckpt", help="a checkpoint written by `fit` (<run>/checkpoints/last.ckpt)")
        parser.add_argument("out_dir", help="a new or empty folder")
        parser.add_argument("--adapter-only", action="store_true", help="the LoRA adapter alone, not merged")
        args = parser.parse_args(rest)
        try:
            print(export_checkpoint(args.ckpt, args.out_dir, adapter_only=args.adapter_only))
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"export error: {err}") from None
    elif command == "plot":
        from srtlab.plot import plot_run

        if not rest:
            raise SystemExit("usage: python -m srtlab plot RUN_DIR [METRIC ...]")
        print(plot_run(rest[0], rest[1:] or None))
    elif command == "report":
        from srtlab.report import main as report

        report(rest)
    else:
        raise SystemExit(f"unknown command {command!r}\n\n{USAGE}")


if __name__ == "__main__":
    main()
