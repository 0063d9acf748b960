"""Train a classifier on SVHN cropped digits (train_32x32.mat and test_32x32.mat from
http://ufldl.stanford.edu/housenumbers/, downloaded to <data-dir>/svhn/ on first use).

The default is the coursework's MLP 3072-128-ReLU-10 (--batchnorm adds a
BatchNorm1d after the hidden Linear; --weight-decay is the L2 penalty);
--model cnn is a convnet. Validation is 30% of the training set. --sweep runs
the coursework's grid lr {1e-3, 1e-2} x optimizer {adam, momentum} x batchnorm
{off, on}, writes results.csv, one loss plot per run and a summary plot, and
reports the test accuracy of the best run. Saves model.npz, history.csv and
PNG figures under --out.
"""
import argparse
import itertools
import os
import sys
import time

import tinynet as tn


def build_model(kind="mlp", batchnorm=False):
    """3072-128-[BatchNorm1d]-ReLU-10, or a 2-conv-block convnet ([BatchNorm2d] after each conv)."""
    if kind == "mlp":
        norm = [tn.BatchNorm1d(128)] if batchnorm else []
        return tn.Sequential([tn.Flatten(), tn.Linear(3072, 128), *norm, tn.ReLU(), tn.Linear(128, 10)])
    layers = []
    for c_in, c_out in ((3, 32), (32, 64)):   # (N, 3, 32, 32) -> 32 x 16 x 16 -> 64 x 8 x 8
        layers += [tn.Conv2d(c_in, c_out, 3, padding=1), *([tn.BatchNorm2d(c_out)] if batchnorm else []),
                   tn.ReLU(), tn.MaxPool2d(2)]
    return tn.Sequential(layers + [tn.Flatten(), tn.Linear(64 * 8 * 8, 128), tn.ReLU(), tn.Linear(128, 10)])


def load_data(args):
    """(X_train, y_train, X_val, y_val, X_test, y_test); exits with instructions when SVHN is missing."""
    try:
        X, y = tn.load_svhn("train", args.data_dir)
        X_test, y_test = tn.load_svhn("test", args.data_dir)
    except OSError as e:
        sys.exit(f"train_svhn.py: SVHN is not available ({e}).\nGet train_32x32.mat and test_32x32.mat from "
                 "http://ufldl.stanford.edu/housenumbers/ and put them in <data-dir>/svhn/ "
                 "(--data-dir, default $TINYNET_DATA or data/ beside tinynet.py).")
    if args.quick:
        X, y, X_test, y_test = X[:1500], y[:1500], X_test[:500], y_test[:500]
    return (*tn.train_val_split(X, y, 0.3, stratify=True), X_test, y_test)


def sweep(args, train, val):
    """Train every configuration of the grid; write results.csv, a loss plot per run and a
    summary plot; return the model with the best val accuracy and its history."""
    rows, histories, best = [], {}, None
    for lr, optimizer, batchnorm in itertools.product((1e-3, 1e-2), ("adam", "momentum"), (False, True)):
        name = f"lr{lr:g}_{optimizer}_{'bn' if batchnorm else 'nobn'}"
        print(f"--- {name}")
        tn.manual_seed(args.seed)
        model = build_model(args.model, batchnorm)
        run_args = argparse.Namespace(**{**vars(args), "lr": lr, "optimizer": optimizer})
        start = time.perf_counter()
        histories[name] = history = tn.fit_with_args(model, run_args, *train, val)
        h = {k: v[-1] for k, v in history.history.items()}
        rows.append({"lr": lr, "optimizer": optimizer, "batchnorm": batchnorm, "train_loss": h["loss"],
                     "val_loss": h["val_loss"], "val_accuracy": h["val_accuracy"],
                     "time_s": time.perf_counter() - start})
        if best is None or h["val_accuracy"] > best[0]:
            best = h["val_accuracy"], name, model, history
        if not args.no_plots:
            tn.plot_history(history, os.path.join(args.out, f"loss_{name}.png"), keys=("loss",), title=name)
    tn.print_table(rows, os.path.join(args.out, "results.csv"))
    if not args.no_plots:
        tn.plot_curves(histories, os.path.join(args.out, "sweep.png"), title="SVHN sweep")
    print(f"best configuration: {best[1]} (val accuracy {best[0]:.4f})")
    return best[2], best[3]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tn.add_common_args(parser, epochs=10, batch_size=128, lr=1e-3, optimizer="adam")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="architecture (%(default)s)")
    parser.add_argument("--batchnorm", action="store_true", help="add BatchNorm after the hidden layers")
    parser.add_argument("--sweep", action="store_true", help="run the lr x optimizer x batchnorm grid")
    args = tn.parse_args(parser)

    X_train, y_train, X_val, y_val, X_test, y_test = load_data(args)
    print(f"train {len(X_train)}, validation {len(X_val)}, test {len(X_test)} images")
    if args.sweep:
        model, history = sweep(args, (X_train, y_train), (X_val, y_val))
    else:
        model = build_model(args.model, args.batchnorm)
        print(model.summary((3, 32, 32)))
        history = tn.fit_with_args(model, args, X_train, y_train, (X_val, y_val))
    accuracy = tn.save_run(model, history, X_test, y_test, args.out, not args.no_plots)
    print(f"saved model.npz, history.csv and figures in {args.out}")
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
