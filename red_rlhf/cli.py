"""The `red-rlhf` command line. Each sub-command parses its arguments, builds, and calls one function."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from red_rlhf.data.jsonl import read_responses
from red_rlhf.core.redistribute import FIRST_TOKEN_RULES, SCHEMES
from red_rlhf.config import INPUT_FORMATS, SCORING_MODES


class UserError(Exception):
    """A mistake in what the user asked for; printed as one line, exit status 2."""


def _load_pretrained(kind: str, loader, name_or_path: str, **kwargs):
    from red_rlhf.models.paths import MODEL_FILES, TOKENIZER_FILES, check_model_path, looks_local

    try:
        check_model_path(name_or_path, kind, TOKENIZER_FILES if kind.endswith("tokenizer") else MODEL_FILES)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None
    local = looks_local(name_or_path)
    try:
        return loader(str(Path(name_or_path).expanduser()) if local else name_or_path, **kwargs)
    except OSError as err:
        raise UserError(f"could not load {kind} {name_or_path!r}: {str(err).splitlines()[0]}") from err


def cmd_score(args: argparse.Namespace) -> None:
    from transformers import AutoTokenizer

    from red_rlhf.report.heatmap import heatmap_html, print_table
    from red_rlhf.models.sources import HFRewardModel
    from red_rlhf.models.scorer import TokenRewardScorer

    if args.input is not None:
        if args.prompt is not None or args.response is not None:
            raise UserError("give either --input FILE.jsonl or --prompt and --response, not both")
        try:
            prompts, responses = read_responses(args.input)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(str(err)) from err
    elif args.prompt is None or args.response is None:
        raise UserError("give --prompt and --response (or --input FILE.jsonl)")
    else:
        prompts, responses = [args.prompt], [args.response]
    for i, response in enumerate(responses):
        if not response:  # whitespace is text a tokenizer may give tokens; the scorer says when it gives none
            raise UserError(f"response {i + 1} is empty: there are no tokens to reward")
    reward = _load_pretrained(
        "reward model", HFRewardModel.from_pretrained, args.reward_model, mode=args.mode, format=args.format,
        label_index=args.label_index, attn_implementation="eager" if args.scheme == "abc" else None,
    )
    policy_tokenizer = None
    if args.policy_tokenizer:
        policy_tokenizer = _load_pretrained("policy tokenizer", AutoTokenizer.from_pretrained, args.policy_tokenizer)
    scorer = TokenRewardScorer(reward, policy_tokenizer=policy_tokenizer, scheme=args.scheme, beta_c=args.beta_c,
                               first_token=args.first_token)
    rows = scorer.score(prompts, responses)
    print_table(rows)
    if args.html:
        print(f"wrote {_write_output('--html', args.html, heatmap_html(rows))}")
    if args.json:
        print(f"wrote {_write_output('--json', args.json, ''.join(json.dumps(row.to_dict()) + chr(10) for row in rows))}")


def _write_output(option: str, path: str, text: str) -> Path:
    """Write a result file; a directory, a read-only place or a full disk is one line naming the option."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"{option} {path} is a directory: give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserError(f"{option} {path}: cannot write: {err.strerror or err}") from None
    return out


def cmd_train_rm(args: argparse.Namespace) -> None:
    import torch

    from red_rlhf.models.prefix import detect_mode
    from red_rlhf.training.reward_model import (fit_reward_model, keep_first_layers, load_backbone, read_pairs,
                                                save_reward_model)
    from red_rlhf.training.export import push_to_hub, write_reward_model_card

    if not 0 <= args.held_out_fraction < 1:
        raise UserError(f"--held-out-fraction must be in [0, 1), got {args.held_out_fraction}")
    if args.push_to_hub is not None and args.push_to_hub.count("/") != 1:
        raise UserError(f"--push-to-hub must be a hub repo id 'user/name', got {args.push_to_hub!r}")
    pairs = read_pairs(args.data)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(pairs), generator=generator).tolist()
    n_held = int(round(len(pairs) * args.held_out_fraction))
    held_out, train = [pairs[i] for i in order[:n_held]], [pairs[i] for i in order[n_held:]]
    if not train:
        raise UserError(f"{args.data}: no pairs left for training after holding out {n_held}")
    out = _output_dir("--output-dir", args.output_dir)  # before the model loads
    if args.model == "tiny":
        from red_rlhf.models.tiny import tiny_reward_model, tiny_tokenizer

        tokenizer = tiny_tokenizer("gpt2")
        model = tiny_reward_model("gpt2", len(tokenizer), pad_token_id=tokenizer.pad_token_id, seed=args.seed, width=64)
    else:
        model, tokenizer = _load_pretrained("reward-model backbone", load_backbone, args.model)
    if detect_mode(model) != "causal":
        raise UserError(f"{type(model).__name__} is not a decoder with a score head; train-rm trains causal reward "
                        "models, whose prefix scores RED reads in one pass")
    if args.keep_layers is not None:
        try:
            keep_first_layers(model, args.keep_layers)
        except ValueError as err:
            raise UserError(f"--keep-layers: {err}") from err
    result = fit_reward_model(model, tokenizer, train, held_out, head_only=args.head_only, all_positions=args.all_positions,
                              max_length=args.max_length, seed=args.seed, epochs=args.epochs, lr=args.lr,
                              batch_size=args.batch_size, weight_decay=args.weight_decay,
                              head_iterations=args.head_iterations)
    result.update(train_pairs=len(train), held_out_pairs=len(held_out))
    if not held_out:  # no accuracy was measured: null in the file, not NaN
        result.update(accuracy_before=None, accuracy_after=None)
    how = ("score head alone on frozen features" if args.head_only else f"{args.epochs} epochs, lr {args.lr:g}") + (
        f", first {args.keep_layers} blocks kept" if args.keep_layers is not None else "")
    write_reward_model_card(out, base=args.model, data=args.data, metrics=result, how=how)
    out = save_reward_model(model, tokenizer, out, result)  # rm_metrics.json last: it marks a finished folder
    if args.push_to_hub:
        push_to_hub(out, args.push_to_hub, message="red-rlhf: Bradley-Terry reward model")
    if held_out:
        print(f"held-out pairwise accuracy: {result['accuracy_before']:.3f} before, {result['accuracy_after']:.3f} "
              f"after ({len(held_out)} pairs); model saved to {out}")
    else:
        print(f"no held-out pairs (--held-out-fraction {args.held_out_fraction} of {len(pairs)} pairs), so no accuracy "
              f"was measured; model saved to {out}")


def cmd_prepare_data(args: argparse.Namespace) -> None:
    from red_rlhf.data.sentiment import prepare

    out = prepare(args.cache_dir, sdist=args.sdist, seed=args.seed, margin=args.margin)
    print(f"preference pairs: {out}/pairs_train.jsonl, {out}/pairs_eval.jsonl; prompts: {out}/prompts_train.txt, "
          f"{out}/prompts_eval.txt; licence: {out}/LICENSE-vaderSentiment.txt")


DEMO_RENAMED = {"--steps": "train.steps", "--reward-scheme": "reward.scheme", "--policy-lr": "algo.policy_lr",
                "--temperature": "rollout.temperature", "--rl-seed": "train.seed"}
"""`red-rlhf demo` flags of training settings, whose one spelling is their configs/demo.yaml key: each still works,
with a notice."""


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> None:
    import dataclasses

    from red_rlhf.demo import DemoSettings, run_demo

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings) if hasattr(args, f.name)}
    renamed = []
    for flag, key in DEMO_RENAMED.items():
        if hasattr(args, flag):
            value = getattr(args, flag)
            print(f"red-rlhf demo: {flag} {value} is spelled --{key}={value} now (the training setting's key, as on "
                  "red-rlhf train)", file=sys.stderr)
            renamed.append(f"--{key}={value}")
    run_demo(DemoSettings(**given, overrides=tuple(renamed + overrides)))  # the new spelling wins over the old


def _add_demo_flags(parser: argparse.ArgumentParser) -> None:
    """A flag per DemoSettings field (rm_pairs: --rm-pairs), its help the field's; only the flags given reach
    DemoSettings, so every other setting keeps its default."""
    import dataclasses
    import typing

    from red_rlhf.demo import DemoSettings

    kinds = typing.get_type_hints(DemoSettings)
    fields = [f for f in dataclasses.fields(DemoSettings) if "help" in f.metadata]
    for f in sorted(fields, key=lambda f: f.name.startswith("rm_")):  # the reward model's settings last
        flag, kind = "--" + f.name.replace("_", "-"), kinds[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']} (default {'yes' if f.default else 'no'})")
        elif kind == int | None:
            parser.add_argument(flag, type=_count_or_all, default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']} (default {'all' if f.default is None else f.default})")
        else:
            shown = "" if f.default is None else f" (default {f.default})"
            parser.add_argument(flag, type=kind if kind in (int, float) else str, default=argparse.SUPPRESS,
                                help=f"{f.metadata['help']}{shown}")
    for flag in DEMO_RENAMED:
        parser.add_argument(flag, dest=flag, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _count_or_all(text: str) -> int | None:
    """A command-line count, or 'all' (None: no limit)."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'all', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'all', got {text!r}")
    return value


def cmd_tiny_rm(args: argparse.Namespace) -> None:
    from red_rlhf.models.tiny import save_tiny_reward_model

    out = save_tiny_reward_model(args.out_dir, arch=args.arch, seed=args.seed)
    print(f"wrote a tiny, randomly initialised {args.arch} reward model and its tokenizer to {out}")


def end_process_group() -> None:
    """Destroy torch.distributed's process group if one is open, then free what still holds it (models and
    optimisers in reference cycles) while the interpreter is whole. Under torchrun a process that exits with it open
    can abort at interpreter exit (gloo's threads: SIGABRT, "terminate called without an active exception",
    pytorch/pytorch#190489), which would bury a clear error message under a crash report."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def exit_distributed(code: int) -> None:
    """Under torchrun (WORLD_SIZE > 1) end the process here with `code`, skipping the interpreter's teardown: with
    gloo that teardown can still abort a process whose work is done and saved (SIGABRT, seen in our CI even after
    destroy_process_group), and torchrun would report the finished run as failed. By now every file is written and
    closed (each is written inside `with open`), trackers are finished, and the streams are flushed here."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    end_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> None:
    from red_rlhf.config import load_config
    from red_rlhf.training import checkpoint, lock, stops
    from red_rlhf.training.resume import preflight

    cfg = load_config(args.config, overrides)
    preflight(cfg, args.resume)  # output directory, resume settings, model paths: before any model loads
    if os.environ.get("RANK", "0") == "0":  # the main process owns the lock (Trainer.train takes it)
        lock.check_free(Path(cfg.train.output_dir).expanduser())  # another trainer there: say so before models load
    # until the loop installs its own handlers (finish the step, save), a stop signal stops start-up at once
    previous = stops.install(stops.raise_on_signal) if _main_thread() else {}
    try:
        from red_rlhf.training.trainer import Trainer

        Trainer(cfg).train(resume=args.resume)
    except KeyboardInterrupt as err:
        raise SystemExit(_stopped(err, cfg, args, overrides)) from None
    finally:  # also when Trainer() itself raised (train() ends its own): see end_process_group
        stops.restore(previous)
        end_process_group()
    if os.environ.get("RANK", "0") == "0":  # one line, not one per data-parallel process
        print(f"done: metrics in {cfg.train.output_dir}/metrics.jsonl, policy in {cfg.train.output_dir}/policy; "
              f"curves: red-rlhf plot {cfg.train.output_dir}")


def _stopped(err: KeyboardInterrupt, cfg, args: argparse.Namespace, overrides: list[str]) -> int:
    """Say how a run stopped by Ctrl-C or a scheduler's signal ended and how to go on; the exit status (stops.py)."""
    from red_rlhf.training import checkpoint, stops

    again = " ".join(["red-rlhf train"] + (["--config", args.config] if args.config else []) + overrides)
    if not args.resume and "--resume" not in overrides:
        again += " --resume"
    out = Path(cfg.train.output_dir).expanduser()
    saved = checkpoint.latest(out, must_exist=False, say=lambda line: None)
    how = err.signal_name if isinstance(err, stops.Stopped) else "SIGINT"
    if os.environ.get("RANK", "0") == "0":
        if saved is None:
            print(f"{how}: stopped before the first checkpoint; start again with: {again.removesuffix(' --resume')}",
                  flush=True)
        elif isinstance(err, stops.Stopped) and err.step:
            print(f"{how}: stopped after step {err.step}; checkpoint {saved}; resume with: {again}", flush=True)
        else:  # a second signal, or one during start-up: the step in progress is lost, the checkpoint is whole
            print(f"{how}: stopped at once; the last checkpoint is {saved}; resume with: {again}", flush=True)
    return err.exit_code if isinstance(err, stops.Stopped) else stops.INTERRUPTED_EXIT


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _output_dir(option: str, path: str) -> Path:
    """A directory the command can write into, checked (created) before anything slow runs."""
    from red_rlhf.config import ConfigError
    from red_rlhf.models.paths import writable_dir

    try:
        return writable_dir(path, option)
    except ConfigError as err:
        raise UserError(str(err)) from None


def cmd_plot(args: argparse.Namespace) -> None:
    from red_rlhf.report.plots import plot_run

    print(f"wrote {plot_run(args.output_dir, args.out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="red-rlhf", description="RLHF with token-level rewards (RED).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (shows e.g. the scoring mode chosen)")
    sub = parser.add_subparsers(dest="command", required=True)

    score = sub.add_parser("score", help="per-token rewards of responses under a reward model")
    score.add_argument("--reward-model", required=True, help="HF reward model name or local path (a *ForSequenceClassification)")
    score.add_argument("--prompt", help="the prompt text")
    score.add_argument("--response", help="the response text")
    score.add_argument("--input", help='JSON-lines file with "prompt" and "response" fields, one pair a line')
    score.add_argument("--policy-tokenizer", help="tokenizer whose tokens get the rewards (default: the reward model's)")
    score.add_argument("--scheme", choices=SCHEMES, default="red", help="reward placement (default: red)")
    score.add_argument("--beta-c", type=float, default=1.0, help="RED blend with the sparse reward; 1 = pure RED")
    score.add_argument("--first-token", choices=FIRST_TOKEN_RULES, default="difference",
                       help="RED reward of the first response token (default: s_1 - s_0, the paper's equations)")
    score.add_argument("--mode", choices=SCORING_MODES, default="auto", help="causal single pass, per-prefix passes, or auto")
    score.add_argument("--format", choices=INPUT_FORMATS, default="auto",
                       help="how prompt and response become the reward model's input (default: auto)")
    score.add_argument("--label-index", type=int, help="which output is the reward, for models with several labels")
    score.add_argument("--html", help="also write a self-contained heatmap page here")
    score.add_argument("--json", help="also write the scored tokens here as JSON lines")
    score.set_defaults(func=cmd_score)

    train = sub.add_parser("train", help="RL training (PPO, RLOO or GRPO) on token-level rewards",
                           description="Extra arguments --section.key=value override the YAML config.")
    train.add_argument("--config", help="YAML config (see configs/); without it the defaults")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in train.output_dir")
    train.set_defaults(func=cmd_train, takes_overrides=True)

    plot = sub.add_parser("plot", help="draw a run's curves (metrics.jsonl) to a PNG")
    plot.add_argument("output_dir")
    plot.add_argument("--out", help="PNG path (default: OUTPUT_DIR/curves.png)")
    plot.set_defaults(func=cmd_plot)

    rm = sub.add_parser("train-rm", help="train a Bradley-Terry reward model on preference pairs")
    rm.add_argument("--data", required=True, help='JSON lines with "prompt", "chosen" and "rejected" fields')
    rm.add_argument("--output-dir", required=True, help="where the trained reward model and tokenizer are saved")
    rm.add_argument("--model", default="tiny", help="HF decoder (name or path) to put a score head on; 'tiny' builds one")
    rm.add_argument("--held-out-fraction", type=float, default=0.1, help="pairs held out for accuracy (default 0.1)")
    rm.add_argument("--epochs", type=int, default=1)
    rm.add_argument("--lr", type=float, default=1e-5)
    rm.add_argument("--batch-size", type=int, default=8)
    rm.add_argument("--max-length", type=int, default=256, help="longest prompt + response in tokens")
    rm.add_argument("--all-positions", action="store_true",
                    help="also train every position after chosen and rejected diverge (DeepSpeed-Chat style)")
    rm.add_argument("--head-only", action="store_true",
                    help="train the score head alone on the frozen trunk's features (computed once; fast on a CPU)")
    rm.add_argument("--keep-layers", type=int, help="cut the backbone to its first N blocks before training")
    rm.add_argument("--weight-decay", type=float, default=0.03, help="--head-only: L2 penalty on the standardised head")
    rm.add_argument("--head-iterations", type=int, default=400, help="--head-only: full-batch Adam iterations")
    rm.add_argument("--seed", type=int, default=0)
    rm.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the saved folder to this hub model repo")
    rm.set_defaults(func=cmd_train_rm)

    prep = sub.add_parser("prepare-data", help="build the embedded task's data from human sentiment ratings (cached)")
    prep.add_argument("--cache-dir", default="~/.cache/red-rlhf", help="where downloads and prepared files go")
    prep.add_argument("--sdist", help="a local vaderSentiment-3.3.2.tar.gz instead of downloading it with pip")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--margin", type=float, default=1.0, help="least rating difference of a preference pair (-4..4 scale)")
    prep.set_defaults(func=cmd_prepare_data)

    demo = sub.add_parser("demo", help="data -> reward model -> RED-PPO -> evaluation -> OUTPUT_DIR/report.html",
                          description="Extra arguments --section.key=value override the training run's settings, "
                                      "configs/demo.yaml (as on red-rlhf train): e.g. --train.steps=10 "
                                      "--reward.scheme=sparse --algo.policy_lr=5e-4 --train.seed=1.")
    _add_demo_flags(demo)
    demo.set_defaults(func=cmd_demo, takes_overrides=True)

    tiny = sub.add_parser("tiny-rm", help="build a tiny random reward model + tokenizer offline (for trying things out)")
    tiny.add_argument("out_dir")
    tiny.add_argument("--arch", choices=("gpt2", "llama", "bert"), default="gpt2")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_rm)
    return parser


def quiet_third_party(verbose: bool) -> None:
    """Keep libraries' deprecation notices (FutureWarning, DeprecationWarning) and transformers' advisory log
    lines out of the user's output; -v shows them. Where output is not a terminal, the libraries' own progress bars
    ("Loading weights", "Writing model shards", "Generating train split") are off too: there they are carriage-return
    redraws that land inside the plain progress lines (red_rlhf/progress.py) of a log file."""
    if not sys.stderr.isatty():
        _no_library_progress_bars()
    if verbose:
        return
    import warnings

    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


def _no_library_progress_bars() -> None:
    # read at import by huggingface_hub (and through it transformers) and by datasets; switched off directly
    # where they are already imported
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()


def _check_text_arguments(argv: list[str]) -> None:
    """A command-line argument that is not UTF-8 arrives with surrogate escapes: say which one, not a traceback."""
    for number, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise UserError(f"argument {number} ({shown}) is not valid UTF-8 text: re-encode it as UTF-8") from None


def main(argv: list[str] | None = None) -> int:
    try:
        code = run_command(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as stop:  # a stopped run's status (stops.py) ends a torchrun worker the same way
        exit_distributed(stop.code if isinstance(stop.code, int) else 1)
        raise
    exit_distributed(code)  # a no-op outside torchrun
    return code


def run_command(argv: list[str]) -> int:
    try:
        _check_text_arguments(argv)
    except UserError as err:
        print(f"red-rlhf: error: {err}", file=sys.stderr)
        return 2
    args, extra = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    quiet_third_party(args.verbose)
    try:
        if getattr(args, "takes_overrides", False):
            args.func(args, extra)
        elif extra:
            raise UserError(f"unrecognised arguments: {' '.join(extra)}")
        else:
            args.func(args)
    except (UserError, ValueError, FileNotFoundError) as err:
        print(f"red-rlhf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only place: one line naming the file
        where = f" {err.filename}" if err.filename else ""
        print(f"red-rlhf {args.command}: error:{where}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
