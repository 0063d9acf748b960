"""Train a classifier on MNIST (downloaded to data/ on first use, or from $TINYNET_DATA).

--model mlp (default) is the coursework's 784-256-ReLU-10; --model cnn a small
convnet. Validation is the last 10,000 training images. --loss mse puts a
Softmax on the output and trains with MSELoss on one-hot targets.
--embeddings plots learned features against raw pixels and probes them
linearly; --compare-optimizers races the optimizers. Saves model.npz,
history.csv and PNG figures under --out.
"""
import argparse
import os
import time

import numpy as np

import tinynet as tn


def build_model(kind="mlp", loss="ce"):
    """784-256-ReLU-10, or a 2-conv-block convnet; a Softmax output for the MSE loss."""
    if kind == "mlp":
        layers = [tn.Flatten(), tn.Linear(784, 256), tn.ReLU(), tn.Linear(256, 10)]
    else:   # (N, 1, 28, 28) -> 32 x 14 x 14 -> 64 x 7 x 7 -> 128 -> 10
        layers = [tn.Conv2d(1, 32, 3, padding=1), tn.ReLU(), tn.MaxPool2d(2),
                  tn.Conv2d(32, 64, 3, padding=1), tn.ReLU(), tn.MaxPool2d(2),
                  tn.Flatten(), tn.Linear(64 * 7 * 7, 128), tn.ReLU(), tn.Linear(128, 10)]
    return tn.Sequential(layers + [tn.Softmax()] if loss == "mse" else layers)


def loss_for(args):
    return tn.MSELoss() if args.loss == "mse" else tn.CrossEntropyLoss()


def targets(args, y):
    """What the loss compares the output with: the labels, or one-hot rows for MSELoss."""
    return tn.one_hot(y, 10) if args.loss == "mse" else y


def embeddings(model, args, X_train, y_train, X_test, y_test, n=1000):
    """Project raw pixels and the learned features (the input of the last Linear layer) of n
    training images to 2-D and plot them side by side; train an even/odd linear probe on each
    (10,000 training images) and print both test accuracies."""
    last = max(i for i, layer in enumerate(model) if isinstance(layer, tn.Linear))

    def features(X):   # model.activations, 1,000 images at a time (conv activations are big)
        return np.concatenate([model.activations(X[i:i + 1000])[last - 1].reshape(len(X[i:i + 1000]), -1)
                               for i in range(0, len(X), 1000)])

    project = tn.pca
    if args.tsne:
        try:
            from sklearn.manifold import TSNE
            project = TSNE(init="pca", random_state=args.seed).fit_transform
        except ImportError:
            print("--tsne needs scikit-learn (pip install scikit-learn); using PCA")
    panels = {}
    probe_args = argparse.Namespace(**{**vars(args), "optimizer": "adam", "lr": 1e-3, "scheduler": "none"})
    for name, f in (("raw pixels", lambda X: X.reshape(len(X), -1)), ("learned features", features)):
        F_train, F_test = f(X_train[:10000]), f(X_test)
        probe = tn.Sequential(tn.Linear(F_train.shape[1], 2))
        tn.fit_with_args(probe, probe_args, F_train, y_train[:10000] % 2, (F_test, y_test % 2))
        accuracy = probe.evaluate(F_test, y_test % 2)["accuracy"]
        print(f"even/odd linear probe on {name} ({F_train.shape[1]} dims): test accuracy {accuracy:.4f}")
        panels[f"{name}: even/odd probe {accuracy:.4f}"] = project(F_train[:n])
    if not args.no_plots:
        tn.plot_embeddings(panels, y_train[:n], os.path.join(args.out, "embeddings.png"))


def compare_optimizers(args, train, val):
    """Train the same model from the same initialisation for (at most) 5 epochs with each optimizer,
    and Adam with OneCycleLR; plot val accuracy and loss per epoch; print final accuracy and time per epoch."""
    runs = [("sgd", 0.1, "none"), ("momentum", 0.01, "none"), ("rmsprop", 1e-3, "none"), ("adam", 1e-3, "none"),
            ("adamw", 1e-3, "none"), ("lion", 1e-4, "none"), ("adam", 3e-3, "onecycle")]
    histories, rows = {}, []
    for optimizer, lr, scheduler in runs:
        label = f"{optimizer} lr={lr:g}" + ("" if scheduler == "none" else f" + {scheduler}")
        print(f"--- {label}")
        tn.manual_seed(args.seed)
        model = build_model(args.model, args.loss)
        run = argparse.Namespace(**{**vars(args), "epochs": min(args.epochs, 5), "optimizer": optimizer, "lr": lr,
                                    "scheduler": scheduler, "weight_decay": 1e-2 if optimizer == "adamw" else 0.0})
        start = time.perf_counter()
        histories[label] = h = tn.fit_with_args(model, run, *train, val, loss_for(args)).history
        rows.append({"run": label, "val_accuracy": h["val_accuracy"][-1], "val_loss": h["val_loss"][-1],
                     "s_per_epoch": (time.perf_counter() - start) / run.epochs})
    tn.print_table(rows, os.path.join(args.out, "optimizers.csv"))
    if not args.no_plots:
        tn.plot_curves(histories, os.path.join(args.out, "optimizers.png"), title=f"MNIST {args.model}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tn.add_common_args(parser, epochs=10, batch_size=128, lr=3e-3, optimizer="adam", scheduler="onecycle")
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="architecture (%(default)s)")
    parser.add_argument("--loss", choices=("ce", "mse"), default="ce",
                        help="ce: CrossEntropyLoss on logits; mse: Softmax + MSELoss on one-hot (%(default)s)")
    parser.add_argument("--embeddings", action="store_true", help="plot and linearly probe the learned features")
    parser.add_argument("--tsne", action="store_true", help="with --embeddings: t-SNE (needs scikit-learn), not PCA")
    parser.add_argument("--compare-optimizers", action="store_true", help="also train with every optimizer")
    args = tn.parse_args(parser)

    X_train, y_train, X_test, y_test = tn.load_mnist(args.data_dir)
    X_train, y_train, X_val, y_val = X_train[:-10000], y_train[:-10000], X_train[-10000:], y_train[-10000:]
    if args.quick:
        X_train, y_train, X_val, y_val, X_test, y_test = (X_train[:1000], y_train[:1000], X_val[:500], y_val[:500],
                                                          X_test[:500], y_test[:500])
    print(f"train {len(X_train)}, validation {len(X_val)}, test {len(X_test)} images")

    model = build_model(args.model, args.loss)
    print(model.summary((1, 28, 28)))
    start = time.perf_counter()
    history = tn.fit_with_args(model, args, X_train, targets(args, y_train), (X_val, targets(args, y_val)),
                                 loss_for(args))
    print(f"training time: {time.perf_counter() - start:.1f} s")
    accuracy = tn.save_run(model, history, X_test, y_test, args.out, not args.no_plots)
    if args.embeddings:
        embeddings(model, args, X_train, y_train, X_test, y_test)
    if args.compare_optimizers:
        compare_optimizers(args, (X_train, targets(args, y_train)), (X_val, targets(args, y_val)))
    print(f"saved model.npz, history.csv and figures in {args.out}")
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
