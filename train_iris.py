"""Train the coursework's 4-100-ReLU-100-ReLU-3 MLP on Fisher's Iris (offline: data/iris.csv).

Stratified 80/20 train/test split, then 20% of the training part held out for
validation; features standardized with the training statistics. Saves
model.npz, history.csv, loss.png, accuracy.png and confusion.png under --out.
"""
import argparse
import os

import tinynet as tn

CLASSES = ("setosa", "versicolor", "virginica")


def build_model():
    return tn.Sequential(tn.Linear(4, 100), tn.ReLU(), tn.Linear(100, 100), tn.ReLU(), tn.Linear(100, 3))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tn.add_common_args(parser, epochs=100, batch_size=16, lr=1e-3)
    args = tn.parse_args(parser)

    X, y = tn.load_iris(args.data_dir and os.path.join(args.data_dir, "iris.csv"))
    X_train, y_train, X_test, y_test = tn.train_val_split(X, y, 0.2, stratify=True)
    X_train, y_train, X_val, y_val = tn.train_val_split(X_train, y_train, 0.2, stratify=True)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    X_train, X_val, X_test = [(a - mean) / std for a in (X_train, X_val, X_test)]
    print(f"train {len(X_train)}, validation {len(X_val)}, test {len(X_test)} samples")

    model = build_model()
    print(model.summary())
    history = tn.fit_with_args(model, args, X_train, y_train, (X_val, y_val))
    accuracy = tn.save_run(model, history, X_test, y_test, args.out, not args.no_plots, CLASSES, images=False)
    print(f"saved model.npz, history.csv and figures in {args.out}")
    print(f"test accuracy: {accuracy:.4f}")


if __name__ == "__main__":
    main()
