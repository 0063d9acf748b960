"""Train a classifier on MNIST (downloaded to data/ on first use, or from $TINYNET_DATA).

--model mlp (default) is the coursework's 784-256-ReLU-10, 10 epochs (--hidden 40 40: the
embeddings lab's 784-40-40-10); --model cnn a small convnet (conv32-pool-conv64-pool-128-10),
6 epochs: 99.3% in about 2.3 minutes on 2 cores; --model labcnn the CNN lab's network
(conv8 5x5, pool, ReLU, conv16 3x3, pool, ReLU, Linear 400-10), 15 epochs (--channels 16 32
doubles its channels). The default run is Adam with OneCycleLR (max lr 3e-3); with any other
--optimizer the default schedule is none, so --optimizer sgd is plain SGD at --lr. Before
training the script prints the model, optimizer, lr, momentum and schedule it runs.
Validation is the last 10,000 training images. --loss mse puts a Softmax on the output and
trains with MSELoss on one-hot targets.
--model lstm and --model gru read each image as 28 rows of 28 pixels (a sequence of 28 steps,
batch_first): LSTM or GRU(28, 128), its last step (tn.LastStep), Linear(128, 10); 8 epochs,
Adam and OneCycleLR as the default run.
--model transformer reads each image as 28 tokens (its rows): a Linear token embedding, a
learned position embedding, two encoder layers, the mean over tokens, Linear; 6 epochs, and
draws its attention weights (attention.png).
--embeddings draws 1,000 training images in 2-D, raw pixels beside the learned
features (the input of the last Linear layer), with t-SNE (scikit-learn) or
--projection pca, and trains an even/odd logistic regression (a linear probe)
on each; --compare-optimizers races the optimizers. Saves model.npz,
history.csv and PNG figures (loss, accuracy, batch_loss, confusion,
predictions) under --out.
"""
import argparse
import os
import sys
import time

import numpy as np

import scripts_common as common
import tinynet as tn


def mlp(hidden=(256,), **_):
    """Flatten, then Linear + ReLU for each hidden size, then Linear(., 10): 784-256-ReLU-10 by
    default, the embeddings lab's 784-40-ReLU-40-ReLU-10 with --hidden 40 40."""
    sizes, layers = [784, *hidden], [tn.Flatten()]
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [tn.Linear(n_in, n_out), tn.ReLU()]
    return layers + [tn.Linear(sizes[-1], 10)], "mlp " + "-".join(map(str, sizes + [10]))


def cnn(**_):
    """(N, 1, 28, 28) -> 32 x 14 x 14 -> 64 x 7 x 7 -> 128 -> 10: two conv blocks, 3x3 'same'."""
    layers = [tn.Conv2d(1, 32, 3, padding=1), tn.ReLU(), tn.MaxPool2d(2),
              tn.Conv2d(32, 64, 3, padding=1), tn.ReLU(), tn.MaxPool2d(2),
              tn.Flatten(), tn.Linear(64 * 7 * 7, 128), tn.ReLU(), tn.Linear(128, 10)]
    return layers, "cnn conv32-pool-conv64-pool-128-10"


def labcnn(channels=(8, 16), **_):
    """The CNN lab's network: conv c1 5x5, max-pool 2, ReLU, conv c2 3x3, max-pool 2, ReLU,
    Linear(c2 * 5 * 5, 10); (N, 1, 28, 28) -> c1 x 24 x 24 -> c1 x 12 x 12 -> c2 x 10 x 10
    -> c2 x 5 x 5 -> 10. The lab's channels are 8 and 16 (Linear 400 -> 10)."""
    c1, c2 = channels
    layers = [tn.Conv2d(1, c1, 5), tn.MaxPool2d(2), tn.ReLU(),
              tn.Conv2d(c1, c2, 3), tn.MaxPool2d(2), tn.ReLU(),
              tn.Flatten(), tn.Linear(c2 * 5 * 5, 10)]
    return layers, f"labcnn conv{c1}k5-pool-relu-conv{c2}k3-pool-relu-{c2 * 25}-10"


def _recurrent(cell):
    """Each image as 28 rows of 28 pixels, a sequence (N, 28, 28) batch_first: cell(28, 128),
    its last step h_28 (N, 128) (tn.LastStep), Linear(128, 10)."""
    layers = [tn.Flatten(1, 2), cell(28, 128, batch_first=True), tn.LastStep(), tn.Linear(128, 10)]
    return layers, (f"{cell.__name__.lower()} 28 rows as steps: {cell.__name__}(28, 128), "
                    "last step, 128-10")


def lstm(**_):
    """LSTM(28, 128) over the 28 rows, its last step, Linear(128, 10)."""
    return _recurrent(tn.LSTM)


def gru(**_):
    """GRU(28, 128) over the 28 rows, its last step, Linear(128, 10)."""
    return _recurrent(tn.GRU)


def transformer(**_):
    """28 rows as tokens, two encoder layers, the mean over tokens: see transformer_layers."""
    return transformer_layers(), "transformer 28 rows as tokens: d_model 64, 4 heads, 2 layers"


# --model: name -> (builder of (layers, description) from the model flags, default --epochs).
# A new architecture is one more builder and one more entry here.
MODELS = {"mlp": (mlp, 10), "cnn": (cnn, 6), "labcnn": (labcnn, 15), "lstm": (lstm, 8),
          "gru": (gru, 8), "transformer": (transformer, 6)}


def build_model(kind="mlp", loss="ce", **options):
    """The model MODELS[kind] builds from options (hidden=..., channels=...), with a Softmax
    output for the MSE loss -> (Sequential, a one-line description)."""
    layers, description = MODELS[kind][0](**options)
    return tn.Sequential(layers + [tn.Softmax()] if loss == "mse" else layers), description


def transformer_layers(d_model=64, nhead=4, dim_feedforward=128, dropout=0.1):
    """Each image as 28 tokens (its rows) of 28 pixels: (N, 1, 28, 28) -> (N, 28, 28) -> a
    Linear(28, d_model) token embedding plus a learned position embedding -> two encoder
    layers -> the mean over the 28 tokens -> Linear(d_model, 10)."""
    return [tn.Flatten(1, 2), tn.Linear(28, d_model), tn.PositionalEmbedding(28, d_model),
            *[tn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
              for _ in range(2)],
            tn.MeanOverSteps(dim=1), tn.Linear(d_model, 10)]


def plot_attention(model, X, y, path):
    """attention.png: for each image of X (a row of the figure), the image and, per encoder
    layer, which rows (keys, x axis) each row (query, y axis) attends to, averaged over heads.
    Returns the figure, written to `path` (a matplotlib Figure: no window, no pyplot state)."""
    from matplotlib.figure import Figure
    model.eval()
    y_pred = model.predict(X).argmax(axis=1)
    model.forward(X)                                 # leaves each layer's attention weights
    layers = [layer for layer in model if isinstance(layer, tn.TransformerEncoderLayer)]
    fig = Figure(figsize=(3.2 * (1 + len(layers)), 3 * len(X)), layout="constrained")
    axes = fig.subplots(len(X), 1 + len(layers), squeeze=False)
    for i, row in enumerate(axes):
        row[0].imshow(X[i, 0], cmap="gray_r")
        row[0].set_title(f"digit {y[i]} (predicted {y_pred[i]})", fontsize=10)
        row[0].set_ylabel("image row (token)")
        for j, layer in enumerate(layers):
            im = row[j + 1].imshow(layer.self_attn.attn_weights[i], cmap="viridis")
            row[j + 1].set_title(f"encoder layer {j + 1}", fontsize=10)
            row[j + 1].set_ylabel("query: row attending")
            row[j + 1].set_xlabel("key: row attended to")
            fig.colorbar(im, ax=row[j + 1], shrink=0.8, label="attention weight")
    fig.suptitle("Transformer attention on MNIST test digits: each image row is a token; "
                 "weights averaged over heads", fontsize=11)
    fig.savefig(path, dpi=100)
    return fig


def loss_for(kind):
    """MSELoss for --loss mse, else CrossEntropyLoss."""
    return tn.MSELoss() if kind == "mse" else tn.CrossEntropyLoss()


def targets_for(kind, y):
    """What the loss compares the output with: one-hot rows for --loss mse, else the labels."""
    return tn.one_hot(y, 10) if kind == "mse" else y


def load_mnist_or_exit(data_dir, quick=False):
    """(X_train, y_train, X_val, y_val, X_test, y_test), validation the last 10,000 training
    images; --quick: 1,000 / 500 / 500 of them. Exits with status 1 and instructions when
    MNIST is missing and cannot be downloaded."""
    try:
        X_train, y_train, X_test, y_test = tn.load_mnist(data_dir)
    except OSError as e:
        files = [f"{s}-{k}-idx{d}-ubyte.gz" for s in ("train", "t10k")
                 for k, d in (("images", 3), ("labels", 1))]
        common.exit_missing_data("train_mnist.py", "MNIST", e, files, data_dir, "mnist",
                                 "from https://ossci-datasets.s3.amazonaws.com/mnist/")
    X_train, y_train, X_val, y_val = (X_train[:-10000], y_train[:-10000],
                                      X_train[-10000:], y_train[-10000:])
    if quick:
        return X_train[:1000], y_train[:1000], X_val[:500], y_val[:500], X_test[:500], y_test[:500]
    return X_train, y_train, X_val, y_val, X_test, y_test


def learned_features(model, X):
    """The input of the model's last Linear layer for images X -> (N, d), 1,000 images at a time
    (a convnet's activations are big)."""
    last = max(i for i, layer in enumerate(model) if isinstance(layer, tn.Linear))
    return np.concatenate([model.activations(X[i:i + 1000])[last - 1]
                           .reshape(len(X[i:i + 1000]), -1) for i in range(0, len(X), 1000)])


def train_parity_probe(F_train, y_train, F_test, y_test, epochs, batch_size):
    """Train a logistic regression, Linear(d, 1) + BCEWithLogitsLoss, to tell even digits from
    odd ones from the features F (N, d); -> its test accuracy."""
    probe = tn.Sequential(tn.Linear(F_train.shape[1], 1))
    probe.compile(tn.Adam(probe.parameters(), lr=1e-3), tn.BCEWithLogitsLoss(), metrics=())
    odd = (y_train % 2).astype(np.float32).reshape(-1, 1)          # targets: float (N, 1), 1 = odd
    probe.fit(F_train, odd, epochs=epochs, batch_size=batch_size, verbose=0)
    return float(np.mean((probe.predict(F_test)[:, 0] > 0) == (y_test % 2 == 1)))


def project_2d(F, method, seed):
    """(N, d) -> (N, 2) by t-SNE (sklearn.manifold.TSNE, PCA-initialised) or by PCA."""
    if method == "pca":
        return tn.pca(F, 2)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        sys.exit("train_mnist.py: --projection tsne needs scikit-learn (pip install scikit-learn); "
                 "or run with --projection pca")
    return TSNE(n_components=2, init="pca", random_state=seed).fit_transform(F)


def embeddings(model, args, X_train, y_train, X_test, y_test, n=1000):
    """Train an even/odd linear probe on the raw pixels and on the learned features of (at most)
    10,000 training images and print both test accuracies; with plots, project n training
    images both ways to 2-D (--projection) and draw them side by side (embeddings.png)."""
    panels = {}
    for name, features in (("raw pixels", lambda X: X.reshape(len(X), -1)),
                           ("learned features", lambda X: learned_features(model, X))):
        F_train, F_test = features(X_train[:10000]), features(X_test)
        accuracy = train_parity_probe(F_train, y_train[:10000], F_test, y_test, args.epochs,
                                      args.batch_size)
        print(f"even/odd linear probe on {name} ({F_train.shape[1]} dims): "
              f"test accuracy {accuracy:.4f}")
        if not args.no_plots:
            print(f"{args.projection} of the {name} of {min(n, len(F_train)):,} training images "
                  "...", flush=True)
            panels[f"{name} ({F_train.shape[1]} dims); even/odd linear probe: "
                   f"test accuracy {accuracy:.4f}"] = \
                project_2d(F_train[:n], args.projection, args.seed)
    if panels:
        tn.plot_embeddings(panels, y_train[:n], os.path.join(args.out, "embeddings.png"),
                           title=f"MNIST {args.model}: "
                                 f"{'t-SNE' if args.projection == 'tsne' else 'PCA'} of "
                                 f"{min(n, len(X_train)):,} training images, raw pixels and "
                                 "learned features")


def compare_optimizers(args, train, val):
    """Train the same model from the same initialisation for (at most) 5 epochs with each optimizer,
    and Adam with OneCycleLR; plot val accuracy and loss per epoch; print final accuracy and time
    per epoch."""
    runs = [("sgd", 0.1, "none"), ("momentum", 0.01, "none"), ("rmsprop", 1e-3, "none"),
            ("adam", 1e-3, "none"), ("adamw", 1e-3, "none"), ("lion", 1e-4, "none"),
            ("adam", 3e-3, "onecycle")]
    epochs, histories, rows = min(args.epochs, 5), {}, []
    for name, lr, schedule in runs:
        label = f"{name} lr={lr:g}" + ("" if schedule == "none" else f" + {schedule}")
        print(f"--- {label}")
        tn.manual_seed(args.seed)
        model, description = build_model(args.model, args.loss, **model_options(args))
        optimizer = common.make_optimizer(name, model.parameters(), lr,
                                          1e-2 if name == "adamw" else 0.0)
        scheduler = common.make_scheduler(schedule, optimizer, epochs, len(train[0]),
                                          args.batch_size)
        print(common.describe_run(description, optimizer, scheduler))
        model.compile(optimizer, loss_for(args.loss), scheduler=scheduler)
        start = time.perf_counter()
        histories[label] = h = model.fit(*train, epochs=epochs, batch_size=args.batch_size,
                                         validation_data=val, verbose=2,
                                         callbacks=common.blas_thread_callbacks(args.threads)).history
        rows.append({"run": label, "val_accuracy": h["val_accuracy"][-1],
                     "val_loss": h["val_loss"][-1],
                     "s_per_epoch": (time.perf_counter() - start) / epochs})
    common.print_table(rows, os.path.join(args.out, "optimizers.csv"))
    if not args.no_plots:
        tn.plot_curves(histories, os.path.join(args.out, "optimizers.png"),
                       title=f"MNIST {args.model}, {args.loss} loss: optimizers compared")


def model_options(args):
    """The model flags as build_model's options."""
    return {"hidden": tuple(args.hidden), "channels": tuple(args.channels)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, epochs=10, batch_size=128, lr=3e-3, optimizer="adam",
                           scheduler=None)
    epochs = parser._option_string_actions["--epochs"]       # its default depends on --model
    epochs.default = None
    epochs.help = "passes over the training set (" + ", ".join(
        f"{n} for {kind}" for kind, (_, n) in MODELS.items()) + ")"
    schedule = parser._option_string_actions["--scheduler"]     # its default depends on --optimizer
    schedule.help = schedule.help.replace("(%(default)s)", "(default: onecycle with the default "
                                          "optimizer adam, none with any --optimizer given)")
    parser.add_argument("--model", choices=tuple(MODELS), default="mlp",
                        help="architecture; labcnn is the CNN lab's network (%(default)s)")
    parser.add_argument("--hidden", type=common.positive_int, nargs="+", default=[256], metavar="N",
                        help="mlp: hidden layer sizes, e.g. 40 40 (%(default)s)")
    parser.add_argument("--channels", type=common.positive_int, nargs=2, default=[8, 16],
                        metavar=("C1", "C2"), help="labcnn: channels of its two convs (8 16)")
    parser.add_argument("--loss", choices=("ce", "mse"), default="ce",
                        help="ce: CrossEntropyLoss on logits; mse: Softmax + MSELoss on one-hot "
                        "(%(default)s)")
    parser.add_argument("--embeddings", action="store_true",
                        help="draw raw pixels and learned features in 2-D; even/odd linear probe "
                        "on each")
    parser.add_argument("--projection", choices=("tsne", "pca"), default="tsne",
                        help="with --embeddings: t-SNE (scikit-learn) or PCA, the fast one "
                             "(%(default)s)")
    parser.add_argument("--compare-optimizers", action="store_true",
                        help="also train with every optimizer")
    args = parser.parse_args(argv)
    if args.quick:
        common.reject_flags(parser, ["--epochs"], "with --quick, which trains 1 epoch", argv)
        args.epochs = 1
    elif args.epochs is None:                 # the convnet reaches 99.3% in 6 epochs
        args.epochs = MODELS[args.model][1]
    if args.scheduler is None:                # plain --optimizer sgd is plain SGD at --lr
        args.scheduler = "onecycle" if args.optimizer == "adam" else "none"
    common.check_common_args(parser, args, argv)
    if not args.embeddings:
        common.reject_flags(parser, ["--projection"], "without --embeddings", argv)
    if args.no_plots:
        common.reject_flags(parser, ["--projection"], "with --no-plots, which draws no embeddings",
                            argv)
    if args.model != "mlp":
        common.reject_flags(parser, ["--hidden"], f"with --model {args.model} (mlp takes it)", argv)
    if args.model != "labcnn":
        common.reject_flags(parser, ["--channels"], f"with --model {args.model} (labcnn takes it)",
                            argv)
    tn.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    print("config:", vars(args))

    X_train, y_train, X_val, y_val, X_test, y_test = load_mnist_or_exit(args.data_dir, args.quick)
    print(f"train {len(X_train)}, validation {len(X_val)}, test {len(X_test)} images")
    t_train, t_val = targets_for(args.loss, y_train), targets_for(args.loss, y_val)

    model, description = build_model(args.model, args.loss, **model_options(args))
    model.summary((1, 28, 28))
    optimizer = common.make_optimizer(args.optimizer, model.parameters(), args.lr,
                                      args.weight_decay, args.decay_all)
    scheduler = common.make_scheduler(args.scheduler, optimizer, args.epochs, len(X_train),
                                      args.batch_size, args.gamma, args.step_every)
    model.compile(optimizer, loss_for(args.loss), scheduler=scheduler)
    print(common.describe_run(description, optimizer, scheduler))
    start = time.perf_counter()
    history = model.fit(X_train, t_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(X_val, t_val), verbose=1,
                        callbacks=common.blas_thread_callbacks(args.threads))
    print(f"training time: {time.perf_counter() - start:.1f} s")

    y_pred = model.predict(X_test).argmax(axis=1)
    common.save_model_and_history(model, history, args.out)
    if not args.no_plots:
        title = f"MNIST {args.model}, {args.loss} loss, {args.optimizer} lr {args.lr:g}"
        common.save_run_figures(history, y_test, y_pred, args.out, title, X_test=X_test)
    if args.model == "transformer" and not args.no_plots:
        plot_attention(model, X_test[:4], y_test[:4], os.path.join(args.out, "attention.png"))
    if args.embeddings:
        embeddings(model, args, X_train, y_train, X_test, y_test)
    if args.compare_optimizers:
        compare_optimizers(args, (X_train, t_train), (X_val, t_val))
    print(f"saved model.npz, history.csv{'' if args.no_plots else ' and figures'} in {args.out}")
    print(f"test accuracy: {np.mean(y_pred == y_test):.4f}")


if __name__ == "__main__":
    main()
