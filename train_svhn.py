"""Train a classifier on SVHN cropped digits (train_32x32.mat and test_32x32.mat from
http://ufldl.stanford.edu/housenumbers/, downloaded to <data-dir>/svhn/ on first use).

The default is the coursework's MLP 3072-128-ReLU-10 (--batchnorm adds a
BatchNorm1d after the hidden Linear; --weight-decay is the L2 penalty, on the
weights only: --decay-all also decays biases and BatchNorm, as torch's
optimizers do; --gradcheck checks the gradients by finite differences first);
--model cnn is a convnet. Both start with Normalize: each colour channel is
standardised with the training set's mean and standard deviation, saved with
the model so that evaluation uses the same statistics. Validation is 30% of the
training set. --sweep runs the coursework's grid lr {1e-3, 1e-2} x optimizer
{adam, momentum} x batchnorm {off, on} (so it rejects --lr, --optimizer and
--batchnorm; --scheduler and --weight-decay apply to every run), writes
results.csv, one loss plot per run and a summary plot, and reports the test
accuracy of the best run. Saves model.npz, history.csv and PNG figures under --out.
"""
import argparse
import copy
import itertools
import os
import time

import numpy as np

import scripts_common as common
import tinynet as tn

SWEEP = {"lr": (1e-3, 1e-2), "optimizer": ("adam", "momentum"), "batchnorm": (False, True)}


def build_model(mean, std, kind="mlp", batchnorm=False):
    """Normalize(mean, std), then 3072-128-[BatchNorm1d]-ReLU-10, or a 2-conv-block convnet
    ([BatchNorm2d] after each conv)."""
    if kind == "mlp":
        norm = [tn.BatchNorm1d(128)] if batchnorm else []
        return tn.Sequential([tn.Normalize(mean, std), tn.Flatten(), tn.Linear(3072, 128), *norm,
                              tn.ReLU(), tn.Linear(128, 10)])
    layers = [tn.Normalize(mean, std)]
    for c_in, c_out in ((3, 32), (32, 64)):   # (N, 3, 32, 32) -> 32 x 16 x 16 -> 64 x 8 x 8
        layers += [tn.Conv2d(c_in, c_out, 3, padding=1),
                   *([tn.BatchNorm2d(c_out)] if batchnorm else []), tn.ReLU(), tn.MaxPool2d(2)]
    return tn.Sequential(layers + [tn.Flatten(), tn.Linear(64 * 8 * 8, 128), tn.ReLU(),
                                   tn.Linear(128, 10)])


def check_gradients(model, X, n=20, seed=0):
    """Check the model's backward by central differences before training: a float64 copy of
    the model (same weights, train mode), f = sum(model(X) * r) for a fixed random r, and for
    the input and each parameter, n random coordinates (CS231n's sparse check: tn.gradcheck
    perturbs every weight, 2 forward passes each, minutes for 400,000 weights). Prints and
    returns the largest |analytic - numeric| over all of them, relative to the largest gradient."""
    check = copy.deepcopy(model)
    check.astype(np.float64)
    rng = np.random.default_rng(seed)
    x = np.array(X, dtype=np.float64)
    r = rng.uniform(-1, 1, np.shape(check.forward(x)))
    check.zero_grad()
    arrays = [("input", x, check.backward(r))]
    arrays += [(f"{i}.{type(layer).__name__}.{key}", p.data, p.grad.copy())
               for i, layer in enumerate(check) for key, p in vars(layer).items()
               if any(p is q for q in layer.parameters())]
    errors, scale = {}, 0.0
    for name, data, analytic in arrays:
        flat, idx = data.reshape(-1), rng.choice(data.size, min(n, data.size), replace=False)
        original = flat[idx].copy()

        def f(values):
            flat[idx] = values
            return float(np.sum(check.forward(x) * r))
        numeric = tn.numerical_gradient(f, original.copy())
        flat[idx] = original
        errors[name] = np.abs(analytic.reshape(-1)[idx] - numeric).max()
        scale = max(scale, np.abs(analytic).max(), np.abs(numeric).max())
    worst = max(errors, key=errors.get)
    error = errors[worst] / scale if scale else 0.0
    print(f"gradient check (float64, {len(x)} images, {n} random coordinates of the input and "
          f"of each of {len(arrays) - 1} parameters): max relative error {error:.2e} ({worst})")
    return error


def load_svhn_or_exit(data_dir, quick=False):
    """(X_train, y_train, X_val, y_val, X_test, y_test), a stratified 70/30 train/validation
    split; --quick: the first 1,500 training and 500 test images. Exits with status 1 and
    instructions when SVHN is missing and cannot be downloaded."""
    try:
        X, y = tn.load_svhn("train", data_dir)
        X_test, y_test = tn.load_svhn("test", data_dir)
    except OSError as e:
        common.exit_missing_data("train_svhn.py", "SVHN", e, ["train_32x32.mat", "test_32x32.mat"],
                                 data_dir, "svhn", "from http://ufldl.stanford.edu/housenumbers/")
    if quick:
        X, y, X_test, y_test = X[:1500], y[:1500], X_test[:500], y_test[:500]
    return (*tn.train_val_split(X, y, 0.3, stratify=True), X_test, y_test)


def sweep(args, train, val, mean, std):
    """Train every configuration of SWEEP (with --scheduler, --weight-decay, --epochs and
    --batch-size); write results.csv, a loss plot per run and a summary plot; return the
    model with the best val accuracy and its history."""
    rows, histories, best = [], {}, None
    for lr, optimizer, batchnorm in itertools.product(*SWEEP.values()):
        name = f"lr{lr:g}_{optimizer}_{'bn' if batchnorm else 'nobn'}"
        print(f"--- {name}")
        tn.manual_seed(args.seed)
        model = build_model(mean, std, args.model, batchnorm)
        opt = common.make_optimizer(optimizer, model.parameters(), lr, args.weight_decay,
                                    args.decay_all)
        scheduler = common.make_scheduler(args.scheduler, opt, args.epochs, len(train[0]),
                                          args.batch_size, args.gamma, args.step_every)
        model.compile(opt, tn.CrossEntropyLoss(), scheduler=scheduler)
        print(common.describe_run(describe_model(args.model, batchnorm), opt, scheduler))
        start = time.perf_counter()
        histories[name] = history = model.fit(*train, epochs=args.epochs,
                                              batch_size=args.batch_size,
                                              validation_data=val, verbose=2,
                                              callbacks=common.blas_thread_callbacks(args.threads))
        h = {k: v[-1] for k, v in history.history.items()}
        rows.append({"lr": lr, "optimizer": optimizer, "batchnorm": batchnorm,
                     "train_loss": h["loss"], "val_loss": h["val_loss"],
                     "val_accuracy": h["val_accuracy"], "time_s": time.perf_counter() - start})
        if best is None or h["val_accuracy"] > best[0]:
            best = h["val_accuracy"], name, model, history
        if not args.no_plots:
            tn.plot_history(history, os.path.join(args.out, f"loss_{name}.png"), keys=("loss",),
                            title=f"SVHN {args.model} {name}")
    common.print_table(rows, os.path.join(args.out, "results.csv"))
    if not args.no_plots:
        tn.plot_curves(histories, os.path.join(args.out, "sweep.png"),
                       title=f"SVHN {args.model}: lr x optimizer x batchnorm sweep")
    print(f"best configuration: {best[1]} (val accuracy {best[0]:.4f})")
    return best[2], best[3], best[1]


def describe_model(kind, batchnorm):
    """The model in a few words, for the line printed before training."""
    norm = " + batchnorm" if batchnorm else ""
    return {"mlp": "mlp 3072-128-10", "cnn": "cnn conv32-pool-conv64-pool-128-10"}[kind] + norm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, epochs=10, batch_size=128, lr=1e-3, optimizer="adam")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                        help="architecture (%(default)s)")
    parser.add_argument("--batchnorm", action="store_true",
                        help="add BatchNorm after the hidden layers")
    parser.add_argument("--sweep", action="store_true",
                        help="train the grid lr {1e-3, 1e-2} x optimizer {adam, momentum} x "
                             "batchnorm {off, on}")
    parser.add_argument("--gradcheck", action="store_true",
                        help="before training, check the model's gradients by central differences "
                             "(float64, 4 images, 20 coordinates of the input and of each "
                             "parameter)")
    args = parser.parse_args(argv)
    if args.quick:
        common.reject_flags(parser, ["--epochs"], "with --quick, which trains 1 epoch", argv)
        args.epochs = 1
    common.check_common_args(parser, args, argv)
    if args.sweep:
        common.reject_flags(parser, ["--lr", "--optimizer", "--batchnorm", "--gradcheck"],
                            "with --sweep, which trains every lr x optimizer x batchnorm of its "
                            "grid", argv)
    tn.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    print("config:", vars(args))

    X_train, y_train, X_val, y_val, X_test, y_test = load_svhn_or_exit(args.data_dir, args.quick)
    print(f"train {len(X_train)}, validation {len(X_val)}, test {len(X_test)} images")
    mean, std = X_train.mean(axis=(0, 2, 3)), X_train.std(axis=(0, 2, 3))    # per colour channel
    print(f"channel mean {np.round(mean, 4)}, std {np.round(std, 4)} (the model's Normalize layer)")
    if args.sweep:
        model, history, name = sweep(args, (X_train, y_train), (X_val, y_val), mean, std)
        title = f"SVHN {args.model}, best of the sweep: {name}"
    else:
        model = build_model(mean, std, args.model, args.batchnorm)
        model.summary((3, 32, 32))
        if args.gradcheck:
            check_gradients(model, X_train[:4])
        optimizer = common.make_optimizer(args.optimizer, model.parameters(), args.lr,
                                          args.weight_decay, args.decay_all)
        scheduler = common.make_scheduler(args.scheduler, optimizer, args.epochs, len(X_train),
                                          args.batch_size, args.gamma, args.step_every)
        model.compile(optimizer, tn.CrossEntropyLoss(), scheduler=scheduler)
        print(common.describe_run(describe_model(args.model, args.batchnorm), optimizer, scheduler))
        history = model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                            validation_data=(X_val, y_val), verbose=1,
                            callbacks=common.blas_thread_callbacks(args.threads))
        title = (f"SVHN {args.model}{' + batchnorm' if args.batchnorm else ''}, "
                 f"{args.optimizer} lr {args.lr:g}")

    y_pred = model.predict(X_test).argmax(axis=1)
    common.save_model_and_history(model, history, args.out)
    if not args.no_plots:
        common.save_run_figures(history, y_test, y_pred, args.out, title, X_test=X_test)
    print(f"saved model.npz, history.csv{'' if args.no_plots else ' and figures'} in {args.out}")
    print(f"test accuracy: {np.mean(y_pred == y_test):.4f}")


if __name__ == "__main__":
    main()
