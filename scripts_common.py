"""What the training scripts (train_mnist.py, train_svhn.py, train_iris.py) share: their common
flags, the optimizer and schedule a flag names, the line that says what a run trains, and the
files a run writes.

This is the scripts' plumbing, not part of tinynet: `pip install .` installs tinynet.py alone,
and the scripts, which run from a clone, import this module from their own folder. It uses
tinynet's public names only, except tinynet's rule for the data folder (_data_dir), which the
message of exit_missing_data must name.
"""
import argparse
import math
import os
import sys

import tinynet as tn

OPTIMIZER_CHOICES = ("sgd", "momentum", "rmsprop", "adam", "adamw", "lion")
SCHEDULER_CHOICES = ("none", "step", "exponential", "cosine", "warm-restarts", "onecycle")


def _flag_type(name, check, convert, expected):
    """An argparse `type` function: convert(text), accepted when check(value); otherwise
    argparse's usage error "argument --flag: expected <expected>, got '<text>'" (exit status 2)."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = name
    return parse


positive_int = _flag_type("positive_int", lambda v: v > 0, int, "a positive integer")
positive_float = _flag_type("positive_float", lambda v: 0 < v < math.inf, float,
                            "a positive number")
nonnegative_float = _flag_type("nonnegative_float", lambda v: 0 <= v < math.inf, float,
                               "a number >= 0")
threads_flag = _flag_type("threads_flag", lambda v: v == "auto" or v.isdigit() and int(v) > 0,
                          str, "auto or a positive integer")


def add_common_args(parser, epochs=10, batch_size=128, lr=1e-3, optimizer="adam", scheduler="none",
                    weight_decay=0.0):
    """Add the flags every training script takes, with the script's defaults; returns the parser.
    Bad values (--epochs 0, --lr -1, --threads four) stop argparse before anything runs."""
    name = os.path.splitext(os.path.basename(parser.prog))[0]
    parser.add_argument("--epochs", type=positive_int, default=epochs,
                        help="passes over the training set (%(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                        help="minibatch size (%(default)s)")
    parser.add_argument("--lr", type=positive_float, default=lr,
                        help="learning rate; max_lr for onecycle (%(default)s)")
    parser.add_argument("--optimizer", choices=OPTIMIZER_CHOICES, default=optimizer,
                        help="momentum is SGD with momentum 0.9; sgd has none (%(default)s)")
    parser.add_argument("--scheduler", choices=SCHEDULER_CHOICES, default=scheduler,
                        help="learning-rate schedule (%(default)s); step: x gamma at 1/2 and "
                             "3/4 of the run; exponential: x gamma every step; onecycle cycles the "
                             "momentum (or Adam's beta1) 0.95-0.85-0.95 as torch's does, unless "
                             "the optimizer has none")
    parser.add_argument("--gamma", type=positive_float, default=None,
                        help="the lr factor of step (default 0.1) and exponential (default 0.8 "
                             "an epoch)")
    parser.add_argument("--step-every", choices=("epoch", "batch"), default=None,
                        help="when the schedule steps (default: batch for onecycle, else epoch); "
                             "--gamma is per step")
    parser.add_argument("--weight-decay", type=nonnegative_float, default=weight_decay,
                        help="L2 penalty on the weights only (Linear/Conv2d weights: no bias, no "
                             "normalisation parameter); decoupled for adamw and lion (%(default)s)")
    parser.add_argument("--decay-all", action="store_true",
                        help="torch's behaviour: --weight-decay on every parameter, biases "
                             "included")
    parser.add_argument("--seed", type=int, default=0, help="tinynet.manual_seed (%(default)s)")
    parser.add_argument("--data-dir", default=None,
                        help="data folder (default: $TINYNET_DATA, else data/)")
    parser.add_argument("--out", default=os.path.join("runs", name),
                        help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset and 1 epoch (smoke test)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw the PNG figures")
    parser.add_argument("--threads", type=threads_flag, default="auto",
                        help="BLAS threads: a number, or auto: try 1 and 2 on the first batches "
                             "and keep the faster (2 on a quiet machine, 1 if a core is busy) "
                             "(%(default)s)")
    return parser


def check_common_args(parser, args, argv=None):
    """Refuse (parser.error, before any data loads) the common flags that args would ignore:
    --gamma without a step or exponential schedule, --decay-all without --weight-decay."""
    if args.scheduler not in ("step", "exponential"):
        reject_flags(parser, ["--gamma"],
                     f"with --scheduler {args.scheduler} (step and exponential take it)", argv)
    if args.scheduler == "none":
        reject_flags(parser, ["--step-every"], "without a --scheduler", argv)
    if not args.weight_decay:
        reject_flags(parser, ["--decay-all"], "without --weight-decay", argv)


def flags_typed(parser, argv=None):
    """The option strings (e.g. "--lr") typed on the command line argv (default sys.argv[1:]),
    abbreviations and --flag=value forms included, whether or not the value is the default."""
    unset = object()
    typed = parser.parse_args(argv, argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    return {s for a in parser._actions
            if a.option_strings and getattr(typed, a.dest, unset) is not unset
            for s in a.option_strings if s.startswith("--")}


def reject_flags(parser, flags, reason, argv=None):
    """Stop with parser.error (usage and exit status 2) when any of `flags` (option strings)
    was typed on the command line: the run would ignore it, `reason` says why."""
    typed = [f for f in flags if f in flags_typed(parser, argv)]
    if typed:
        parser.error(f"{' and '.join(typed)} {'has' if len(typed) == 1 else 'have'} no effect "
                     f"{reason}; remove {'it' if len(typed) == 1 else 'them'}")


def exit_missing_data(script, dataset, error, files, data_dir, subfolder, source):
    """Print to stderr why `dataset` could not be loaded (error: the loader's exception, which
    lists what was tried) and how to provide `files` (from `source`) in <data_dir>/<subfolder>,
    then exit with status 1, no traceback. data_dir None: where tinynet's loaders look
    ($TINYNET_DATA, else data/ beside tinynet.py in a clone)."""
    folder = os.path.abspath(os.path.join(tn._data_dir(data_dir), subfolder))
    them = "it" if len(files) == 1 else "them"
    sys.exit(f"{script}: {dataset} is not available.\n{error}\n\n"
             f"What to do: get {', '.join(files)} ({source})\n"
             f"and put {them} in {folder}{os.sep}, or run with --data-dir DIR (or set the\n"
             f"TINYNET_DATA environment variable to DIR) where "
             f"DIR/{subfolder + '/' if subfolder else ''} holds {them}.")


def blas_thread_callbacks(threads):
    """--threads: "auto" -> [tn.BlasThreads()], tinynet's callback that picks 1 or 2 BLAS threads
    on the first batches of each fit; a number -> that many threads from now on, and no
    callback."""
    if threads == "auto":
        return [tn.BlasThreads()]
    if not threads.isdigit() or int(threads) < 1:
        raise ValueError(f"--threads: expected auto or a positive number, got {threads!r}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise ImportError("--threads: setting the BLAS thread count needs threadpoolctl: "
                          "pip install threadpoolctl") from None
    threadpool_limits(int(threads), user_api="blas")
    return []


def make_optimizer(name, params, lr, weight_decay=0.0, decay_all=False):
    """An optimizer from its OPTIMIZER_CHOICES name ("sgd": plain SGD, momentum 0; "momentum":
    SGD with momentum 0.9). weight_decay applies to the weights only: parameters with 2 or more
    dimensions (Linear and Conv2d weights); biases and normalisation parameters (1-D) go in a
    second parameter group with weight_decay 0. decay_all=True decays every parameter, as
    torch's optimizers do when given model.parameters()."""
    if name not in OPTIMIZER_CHOICES:
        raise ValueError(f"make_optimizer: expected one of {OPTIMIZER_CHOICES}, got {name!r}")
    params = list(params)
    if weight_decay and not decay_all:
        groups = [{"params": [p for p in params if p.data.ndim >= 2]},
                  {"params": [p for p in params if p.data.ndim < 2], "weight_decay": 0.0}]
        params = [g for g in groups if g["params"]]
    if name in ("sgd", "momentum"):
        momentum = 0.9 if name == "momentum" else 0
        return tn.SGD(params, lr, momentum=momentum, weight_decay=weight_decay)
    cls = {"rmsprop": tn.RMSprop, "adam": tn.Adam, "adamw": tn.AdamW, "lion": tn.Lion}[name]
    return cls(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(name, optimizer, epochs, train_size, batch_size, gamma=None, step_every=None):
    """A scheduler from its SCHEDULER_CHOICES name (None for "none"), for a run of `epochs` epochs
    over `train_size` samples in batches of `batch_size`, stepped every "epoch" or every "batch"
    (step_every None: onecycle every batch, the others every epoch). With B = ceil(train_size /
    batch_size) batches an epoch (as fit counts them), the run has T = epochs steps, or epochs * B
    per batch:
        step:          MultiStepLR, lr x gamma (0.1) at steps T // 2 and 3T // 4 (at least 1)
        exponential:   ExponentialLR, lr x gamma every step (default 0.8 an epoch, 0.8^(1/B) a
                       batch)
        cosine:        CosineAnnealingLR, T_max = T
        warm-restarts: CosineAnnealingWarmRestarts, T_0 = T // 3 (at least 1)
        onecycle:      OneCycleLR, max_lr = the optimizer's lr, total_steps = T; it cycles the
                       momentum (or beta1) as torch's, except for an optimizer with momentum 0."""
    if name not in SCHEDULER_CHOICES:
        raise ValueError(f"make_scheduler: expected one of {SCHEDULER_CHOICES}, got {name!r}")
    if name == "none":
        return None
    step_every = step_every or ("batch" if name == "onecycle" else "epoch")
    if step_every not in ("epoch", "batch"):
        raise ValueError(f"make_scheduler: expected step_every 'epoch' or 'batch', "
                         f"got {step_every!r}")
    batches = math.ceil(train_size / batch_size)
    T = epochs * batches if step_every == "batch" else epochs
    if name == "step":
        milestones = [max(1, T // 2), max(1, T * 3 // 4)]
        scheduler = tn.MultiStepLR(optimizer, milestones, gamma=gamma or 0.1)
    elif name == "exponential":
        default = 0.8 ** (1 / batches) if step_every == "batch" else 0.8
        scheduler = tn.ExponentialLR(optimizer, gamma=gamma or default)
    elif name == "cosine":
        scheduler = tn.CosineAnnealingLR(optimizer, T_max=T)
    elif name == "warm-restarts":
        scheduler = tn.CosineAnnealingWarmRestarts(optimizer, T_0=max(1, T // 3))
    else:
        group = optimizer.param_groups[0]
        has_momentum = "betas" in group or group.get("momentum", 0) > 0
        scheduler = tn.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                               total_steps=T, cycle_momentum=has_momentum)
    scheduler.step_every = step_every
    return scheduler


def describe_run(model_name, optimizer, scheduler):
    """One line saying what a script trains: the model, the optimizer with its lr, momentum (or
    beta1) and weight decay as they are in its first parameter group, and the schedule, e.g.
    "training mlp 784-256-10 | SGD lr 0.1, momentum 0, weight decay 0 | schedule: none"."""
    group, groups = optimizer.param_groups[0], optimizer.param_groups
    momentum = (f"beta1 {group['betas'][0]:g}" if "betas" in group
                else f"momentum {group.get('momentum', 0):g}")
    decay = f"weight decay {group['weight_decay']:g}"
    if group["weight_decay"] and len(groups) > 1 and not groups[1]["weight_decay"]:
        decay += " on weights only (not on biases and normalisation parameters)"
    elif group["weight_decay"]:
        decay += " on every parameter"
    lr = group.get("max_lr", group["lr"])
    return (f"training {model_name} | {type(optimizer).__name__} lr {lr:g}, {momentum}, {decay} | "
            f"schedule: {describe_schedule(scheduler)}")


def describe_schedule(scheduler):
    """What make_scheduler's scheduler does, in words ("none" for None)."""
    if scheduler is None:
        return "none (constant lr)"
    unit = scheduler.step_every
    units = {"epoch": "epochs", "batch": "batches"}[unit]
    if isinstance(scheduler, tn.MultiStepLR):
        what = f"lr x{scheduler.gamma:g} at {units} {', '.join(map(str, scheduler.milestones))}"
    elif isinstance(scheduler, tn.ExponentialLR):
        what = f"lr x{scheduler.gamma:.6g} every {unit}"
    elif isinstance(scheduler, tn.CosineAnnealingLR):
        what = f"cosine to {scheduler.eta_min:g} over {scheduler.T_max} {units}"
    elif isinstance(scheduler, tn.CosineAnnealingWarmRestarts):
        what = f"cosine restarting every {scheduler.T_0} {units} (T_mult {scheduler.T_mult})"
    elif isinstance(scheduler, tn.OneCycleLR):
        g = scheduler.optimizer.param_groups[0]
        what = (f"lr {g['initial_lr']:.3g} up to max lr {g['max_lr']:g}, then down to "
                f"{g['min_lr']:.3g} over {scheduler.total_steps} {units}; ")
        what += (f"it also cycles the {'beta1' if scheduler.use_beta1 else 'momentum'} "
                 f"{g['max_momentum']:g} -> {g['base_momentum']:g} -> {g['max_momentum']:g} "
                 "(as torch's)" if scheduler.cycle_momentum else "momentum unchanged")
    else:
        what = f"stepped every {unit}"
    return f"{type(scheduler).__name__}, {what}"


def save_model_and_history(model, history, out):
    """Write model.npz (model.save) and history.csv (history.to_csv) into the folder `out`."""
    model.save(os.path.join(out, "model.npz"))
    history.to_csv(os.path.join(out, "history.csv"))


def save_run_figures(history, y_test, y_pred, out, title, class_names=None, X_test=None):
    """Write the figures of a run into `out`: loss.png and accuracy.png (per epoch),
    batch_loss.png (history.batch_loss), confusion.png of the test set and, when the test
    images X_test are given, predictions.png. title names the data set and model."""
    tn.plot_history(history, os.path.join(out, "loss.png"), keys=("loss",), title=title)
    tn.plot_history(history, os.path.join(out, "accuracy.png"), keys=("accuracy",), title=title)
    if getattr(history, "batch_loss", None):
        tn.plot_batch_loss(history, os.path.join(out, "batch_loss.png"), title=title)
    tn.plot_confusion_matrix(y_test, y_pred, os.path.join(out, "confusion.png"), class_names,
                             title=title)
    if X_test is not None:
        tn.plot_predictions(X_test, y_test, y_pred, os.path.join(out, "predictions.png"),
                            class_names, title=title)


def print_table(rows, path=None):
    """Print rows (a list of dicts with the same keys) as an aligned table; with `path`, also
    write them as CSV (atomically)."""
    keys = list(rows[0])
    cells = [keys] + [[f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
                      for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    for c in cells:
        print("  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip())
    if path:
        exact = [keys] + [[repr(r[k]) if isinstance(r[k], float) else str(r[k]) for k in keys]
                          for r in rows]
        with open(f"{path}.tmp", "w") as f:          # renamed when complete: never half a file
            f.write("".join(",".join(c) + "\n" for c in exact))
        os.replace(f"{path}.tmp", path)
