"""Train the coursework's 4-100-ReLU-100-ReLU-3 MLP on Fisher's Iris (offline: data/iris.csv).

Stratified 80/20 train/test split, then 20% of the training part held out for
validation. The model's first layer, Normalize, standardises each feature with
the training part's mean and standard deviation; they are saved with the model,
so evaluation and Sequential.load use the same statistics. --loss nll puts a
LogSoftmax on the output and trains with NLLLoss, as the lab does; --loss mse puts a
Softmax on the output and trains with MSELoss(reduction="sum") on one-hot targets, the
lab's summed squared error (torch's reduction="sum"); --activation
sigmoid uses Sigmoid hidden units. --trajectories also draws SGD, momentum,
RMSprop, Adam and Lion minimising the lab's quadratic and Rosenbrock's function
(trajectories.png). Saves model.npz, history.csv, loss.png, accuracy.png,
batch_loss.png and confusion.png under --out.
"""
import argparse
import os

import numpy as np

import scripts_common as common
import tinynet as tn

CLASSES = ("setosa", "versicolor", "virginica")


def build_model(mean, std, activation="relu", loss="ce"):
    """Normalize(mean, std), 4-100-act-100-act-3; a LogSoftmax output for NLLLoss, a Softmax
    output for MSELoss."""
    act = {"relu": tn.ReLU, "sigmoid": tn.Sigmoid}[activation]
    layers = [tn.Normalize(mean, std), tn.Linear(4, 100), act(), tn.Linear(100, 100), act(),
              tn.Linear(100, 3)]
    return tn.Sequential(layers + {"nll": [tn.LogSoftmax()], "mse": [tn.Softmax()]}.get(loss, []))


def load_iris_or_exit(data_dir):
    """(X, y) from <data_dir>/iris.csv, or (no --data-dir) where tn.load_iris looks:
    $TINYNET_DATA/iris.csv, else data/iris.csv beside tinynet.py; exits with status 1 and
    instructions when it is missing (and cannot be downloaded)."""
    try:
        return tn.load_iris(os.path.join(data_dir, "iris.csv") if data_dir else None)
    except OSError as e:
        common.exit_missing_data("train_iris.py", "Iris", e, ["iris.csv"], data_dir, "",
                                 "the 150-row table in scikit-learn's layout, "
                                 "sklearn/datasets/data/iris.csv")


# The lab's two test functions and their gradients, for --trajectories.
def quadratic(x, y):
    return (x - 3) ** 2 + (y - 5) ** 2


def quadratic_grad(x, y):
    return 2 * (x - 3), 2 * (y - 5)


def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def rosenbrock_grad(x, y):
    return -2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)


OPTIMIZERS = {"SGD": (tn.SGD, {}), "momentum 0.9": (tn.SGD, {"momentum": 0.9}),
              "RMSprop": (tn.RMSprop, {}), "Adam": (tn.Adam, {}), "Lion": (tn.Lion, {})}
# (name, f, gradient, start, steps, minimum, lr of each optimizer): each lr is about the largest
# that keeps its path stable and readable (SGD on Rosenbrock diverges above ~1e-3 from this start).
TEST_FUNCTIONS = (
    ("(x-3)² + (y-5)²", quadratic, quadratic_grad, (0, 0), 100, (3, 5),
     {"SGD": 0.05, "momentum 0.9": 0.01, "RMSprop": 0.1, "Adam": 0.2, "Lion": 0.15}),
    ("Rosenbrock (1-x)² + 100(y-x²)²", rosenbrock, rosenbrock_grad, (-1.5, 2), 1000, (1, 1),
     {"SGD": 8e-4, "momentum 0.9": 1e-4, "RMSprop": 0.01, "Adam": 0.05, "Lion": 0.01}),
)


def draw_trajectories(path):
    """Run every optimizer of OPTIMIZERS on each of TEST_FUNCTIONS; print where each ends;
    draw one panel per function into `path`."""
    panels = {}
    for name, f, grad, start, steps, minimum, lrs in TEST_FUNCTIONS:
        paths = {}
        for label, (cls, options) in OPTIMIZERS.items():
            points = tn.optimizer_path(lambda params: cls(params, lr=lrs[label], **options), grad,
                                       start, steps)
            paths[f"{label} lr={lrs[label]:g}"] = points
            print(f"{name}: {label} lr={lrs[label]:g} ends at "
                  f"({points[-1, 0]:.3f}, {points[-1, 1]:.3f})")
        panels[f"{name}: {steps} steps from {start}"] = (f, paths, minimum)
    tn.plot_optimizer_paths(panels, path, title="Optimizer paths on the Iris lab's test functions")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, epochs=100, batch_size=16, lr=1e-3)
    parser.add_argument("--loss", choices=("ce", "nll", "mse"), default="ce",
                        help="ce: CrossEntropyLoss on logits; nll: LogSoftmax + NLLLoss; mse: "
                             "Softmax + MSELoss(reduction='sum') on one-hot targets (%(default)s)")
    parser.add_argument("--activation", choices=("relu", "sigmoid"), default="relu",
                        help="hidden-layer activation (%(default)s)")
    parser.add_argument("--trajectories", action="store_true",
                        help="also draw optimizer paths on the lab's quadratic and Rosenbrock "
                             "(trajectories.png)")
    args = parser.parse_args(argv)
    if args.quick:
        common.reject_flags(parser, ["--epochs"], "with --quick, which trains 1 epoch", argv)
        args.epochs = 1
    common.check_common_args(parser, args, argv)
    if args.no_plots:
        common.reject_flags(parser, ["--trajectories"], "with --no-plots, which draws no figure",
                            argv)
    tn.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    print("config:", vars(args))

    X, y = load_iris_or_exit(args.data_dir)
    if args.quick:   # a small subset: 60 of the 150 samples, 20 of each class
        _, _, X, y = tn.train_val_split(X, y, 60, stratify=True)
    X_train, y_train, X_test, y_test = tn.train_val_split(X, y, 0.2, stratify=True)
    X_train, y_train, X_val, y_val = tn.train_val_split(X_train, y_train, 0.2, stratify=True)
    print(f"train {len(X_train)}, validation {len(X_val)}, test {len(X_test)} samples")

    model = build_model(X_train.mean(axis=0), X_train.std(axis=0), args.activation, args.loss)
    model.summary((4,))
    optimizer = common.make_optimizer(args.optimizer, model.parameters(), args.lr,
                                      args.weight_decay, args.decay_all)
    scheduler = common.make_scheduler(args.scheduler, optimizer, args.epochs, len(X_train),
                                      args.batch_size, args.gamma, args.step_every)
    loss = {"ce": tn.CrossEntropyLoss(), "nll": tn.NLLLoss(), "mse": tn.MSELoss(reduction="sum")}
    model.compile(optimizer, loss[args.loss], scheduler=scheduler)
    target = (lambda y: tn.one_hot(y, 3)) if args.loss == "mse" else (lambda y: y)
    description = f"mlp 4-100-100-3 {args.activation}, {args.loss} loss"
    print(common.describe_run(description, optimizer, scheduler))
    history = model.fit(X_train, target(y_train), epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(X_val, target(y_val)), verbose=1,
                        callbacks=common.blas_thread_callbacks(args.threads))

    y_pred = model.predict(X_test).argmax(axis=1)
    common.save_model_and_history(model, history, args.out)
    if not args.no_plots:
        title = (f"Iris, MLP 4-100-100-3 {args.activation}, {args.loss} loss, "
                 f"{args.optimizer} lr {args.lr:g}")
        common.save_run_figures(history, y_test, y_pred, args.out, title, CLASSES)
    if args.trajectories:
        draw_trajectories(os.path.join(args.out, "trajectories.png"))
    print(f"saved model.npz, history.csv{'' if args.no_plots else ' and figures'} in {args.out}")
    print(f"test accuracy: {np.mean(y_pred == y_test):.4f}")


if __name__ == "__main__":
    main()
