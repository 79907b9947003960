"""What the commands' parsers share: `Parser` (one-line errors, the options it was given), the
flags' types (a text -> its value, or argparse's one-line error), the option groups several
commands add, and `check_port` (a --port checked before a server starts)."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any, NoReturn

from pawlab.config import INFERENCE_PRECISIONS, INFERENCE_RUNTIMES, LAYOUTS
from pawlab.errors import ConfigError
from pawlab.optimizers import DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE, OPTIMIZERS, SCHEDULES, choices


class Parser(argparse.ArgumentParser):
    """argparse's parser with one-line errors, and a list of the options added to it (``options``:
    what `parse_args` needs to tell the flags a user gave from the defaults)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.options: list[argparse.Action] = []  # before argparse's own --help is added
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._listed(super().add_argument(*args, **kwargs))

    def add_mutually_exclusive_group(self, *, required: bool = False) -> Any:
        group = super().add_mutually_exclusive_group(required=required)
        add = group.add_argument
        group.add_argument = lambda *args, **kwargs: self._listed(add(*args, **kwargs))  # type: ignore[method-assign]
        return group

    def _listed(self, action: argparse.Action) -> argparse.Action:
        if action.option_strings and action.dest != "help":
            self.options.append(action)
        return action

    def error(self, message: str) -> NoReturn:
        """One line, not argparse's usage dump."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def worker_count(text: str) -> int | None:
    """``auto`` (None) or a positive integer."""
    if text == "auto":
        return None
    if not text.strip().lstrip("-").isdigit():
        raise argparse.ArgumentTypeError(f"give auto or a number, not {text!r}")
    return positive_int(text)


def days(text: str) -> float:
    """A finite number of days >= 0 (``nan`` and ``inf`` compare oddly: refused)."""
    from pawlab.data.cache import check_days

    try:
        return check_days(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    except ConfigError:
        raise argparse.ArgumentTypeError(f"must be a finite number of days >= 0, got {text}") from None


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port (1-65535): {value}")
    return value


def _number(text: str, least: float, strict: bool) -> float:
    """A finite number above ``least`` (or equal to it, unless ``strict``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > least or (value == least and not strict)) or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a finite number {'>' if strict else '>='} {least:g}, got {text}"
        )
    return value


def positive_float(text: str) -> float:
    return _number(text, 0, strict=True)


def non_negative_float(text: str) -> float:
    return _number(text, 0, strict=False)


def typicality(text: str) -> float:
    value = _number(text, 0, strict=False)
    if value > 1:
        raise argparse.ArgumentTypeError(f"a typicality between 0 and 1, got {text}")
    return value


def class_map(text: str) -> dict[str, str]:
    """``cats=cat,dogs=dog`` -> {"cats": "cat", "dogs": "dog"}."""
    pairs = [part.strip().partition("=") for part in text.split(",") if part.strip()]
    if not pairs or any(not data or not sep or not model for data, sep, model in pairs):
        raise argparse.ArgumentTypeError(f"expected DATA=MODEL pairs like cats=cat,dogs=dog, got {text!r}")
    return {data.strip(): model.strip() for data, _, model in pairs}


def _decays() -> str:
    """The optimizers' default weight decays: ``0.01 for adamw, else 0``."""
    decays = {name: OPTIMIZERS.get(name).weight_decay for name in OPTIMIZERS.names()}
    others = [f"{d:g} for {name}" for name, d in decays.items() if d]
    return ", ".join([*others, "else 0"])


def train_options(p: argparse.ArgumentParser, optimizer: bool = True) -> None:
    """The training flags shared by `train` and `compare`."""
    if optimizer:
        p.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, help=choices(OPTIMIZERS, DEFAULT_OPTIMIZER))
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--schedule", default=DEFAULT_SCHEDULE, help=choices(SCHEDULES, DEFAULT_SCHEDULE))
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--weight-decay", type=float, default=None, help=f"default: the optimizer's ({_decays()})")
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum (sgd)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--balance", default="none", help="imbalanced classes: none, weights or sampler")
    p.add_argument("--augment", default="", help="e.g. rotate=25,noise=0.25,flip,crop=0.6,jitter=0.2")
    p.add_argument(
        "--augment-copies", type=positive_int, default=1, help="augmented copies per image and epoch"
    )
    p.add_argument("--monitor", default="val_loss", help="val_loss or val_accuracy: what the best model is")
    p.add_argument(
        "--patience", type=positive_int, default=None, help="stop after N epochs without improvement"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="initialisation, shuffling, augmentation (and the split)"
    )
    p.add_argument(
        "--split-seed", type=int, default=None, help="the train/validation split (default: --seed)"
    )
    p.add_argument("--size", type=positive_int, default=None, help="override the network's input size")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16 where fast), fp32, bf16, or int8 (a frozen backbone's features in onnxruntime)",
    )
    p.add_argument(
        "--runtime",
        choices=INFERENCE_RUNTIMES,
        default="auto",
        help="what computes a frozen backbone's features: torch, onnxruntime, or auto (torch bf16 "
        "where fast, else the fastest measured on this CPU, once per backbone)",
    )
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")


def inference_options(p: argparse.ArgumentParser, auto: str = "jobs of 3,000 images or more") -> None:
    """--tta, --runtime, --precision, --compile (``auto``: when it compiles), --device."""
    p.add_argument(
        "--tta", action="store_true", help="test-time augmentation: average the image, its mirror and 2 crops"
    )
    p.add_argument(
        "--runtime",
        choices=INFERENCE_RUNTIMES,
        default="auto",
        help="torch, onnxruntime (the model exported to ONNX once, into the user cache), or auto: "
        "the route measured fastest on this CPU among those that agree with fp32 (measured once)",
    )
    p.add_argument(
        "--precision",
        choices=INFERENCE_PRECISIONS,
        default="auto",
        help="auto, fp32, bf16 (torch: where training found it agrees with fp32) or int8 (onnxruntime: "
        "quantized and checked on the model's own data)",
    )
    p.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help=f"torch.compile the network: auto ({auto}), on or off",
    )
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")


def layout_option(p: argparse.ArgumentParser, default: str | None = "auto", also: str = "") -> None:
    p.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=default,
        help="how top folders named train/, validation/, val/, valid/ or test/ are read: auto (as a "
        "split only when nothing else stands beside them), split (always) or classes (as classes)" + also,
    )


def quiet_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def unknown_threshold_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unknown-threshold",
        type=typicality,
        default=0.05,
        metavar="T",
        help="an image less typical than this share of the validation images is unknown: none of the "
        "model's classes (default 0.05)",
    )


def eval_data_options(p: argparse.ArgumentParser) -> None:
    """--report-dir, --workers, --class-map and --layout: where evaluation figures go and how
    its labelled data is read."""
    p.add_argument(
        "--report-dir", type=Path, default=None, help="where to write figures (default: beside the model)"
    )
    p.add_argument("--workers", type=int, default=0)
    p.add_argument(
        "--class-map",
        type=class_map,
        default=None,
        metavar="DATA=MODEL,...",
        help="the data's class names in the model's terms, e.g. cats=cat,dogs=dog",
    )
    layout_option(p, default=None, also="; default: as in training for the model's own source, else auto")


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--port: cannot listen on {host}:{port} ({exc.strerror})") from None
