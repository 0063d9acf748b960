"""Train a character-level language model on Tiny Shakespeare, then let it write.

As karpathy's min-char-rnn and nanoGPT's shakespeare_char: the text (1,115,394 characters,
65 distinct; downloaded into data/shakespeare/ on first use, or read from $TINYNET_DATA)
becomes one integer code per character. The first 90% is cut into windows of --seq-len
characters for training, the last 10% for validation; the target of each window is the
window shifted by one character, so the model learns to predict the next character:

    codes (N, T) -> Embedding(V, E) -> (N, T, E) -> LSTM or GRU(E, H) -> (N, T, H)
                 -> Linear(H, V) -> (N, T, V) -> Permute(0, 2, 1) -> logits (N, V, T)

trained with fit and CrossEntropyLoss over the (N, V, T) logits and (N, T) targets: the mean
of -log p(next character) over every position, in nats per character (ln 65 = 4.17 for a
uniform guess). Then it writes --sample characters one at a time, each drawn from
softmax(logits / --temperature), carrying the recurrent state from one character to the next
(each new character costs one step, not a re-run of the text so far). --model gpt is
nanoGPT's GPT instead (causal transformer blocks; see gpt() below), which has no state to carry:
it writes by re-running its last --seq-len characters for each new one. It prints the sample,
writes model.npz, history.csv, loss.png and batch_loss.png under --out, and ends with the line
`validation loss: <nats per character>`.
"""
import argparse
import os
import time

import numpy as np

import scripts_common as common
import tinynet as tn

# ── the text as integer codes ──────────────────────────────────────────────────

def encode(text, chars=None):
    """text -> (codes, chars): chars the vocabulary (None: the sorted distinct characters of
    text, V of them), codes (len(text),) int64 with text[i] == chars[codes[i]]."""
    chars = sorted(set(text)) if chars is None else chars
    index = {ch: i for i, ch in enumerate(chars)}
    return np.array([index[ch] for ch in text], dtype=np.int64), chars


def decode(codes, chars):
    """The text that `codes` stand for."""
    return "".join(chars[code] for code in codes)


def windows(codes, seq_len):
    """Cut codes into windows of seq_len characters, one after another (each character is
    seen once an epoch), and their targets, each window shifted by one character:
        X[n] = codes[n T : (n + 1) T],   Y[n] = codes[n T + 1 : (n + 1) T + 1]   (N, T)"""
    n = (len(codes) - 1) // seq_len
    X = codes[:n * seq_len].reshape(n, seq_len)
    Y = codes[1:n * seq_len + 1].reshape(n, seq_len)
    return X, Y


# ── the models ─────────────────────────────────────────────────────────────────

def _recurrent(cell, vocab_size, embed, hidden):
    """Embedding(V, E), cell(E, H, batch_first=True), Linear(H, V), Permute(0, 2, 1)."""
    return [tn.Embedding(vocab_size, embed), cell(embed, hidden, batch_first=True),
            tn.Linear(hidden, vocab_size), tn.Permute(0, 2, 1)]


def lstm(vocab_size, embed=64, hidden=256, **_):
    """Embedding, LSTM(E, H) over the characters, Linear(H, V) to the next character's logits."""
    return _recurrent(tn.LSTM, vocab_size, embed, hidden)


def gru(vocab_size, embed=64, hidden=256, **_):
    """The same with a GRU."""
    return _recurrent(tn.GRU, vocab_size, embed, hidden)


def gpt(vocab_size, embed=64, hidden=256, seq_len=100, layers=2, heads=4, dropout=0.0,
        tie=False, **_):
    """nanoGPT's GPT (its shakespeare_char "baby GPT", smaller): each character's embedding plus
    its position's, `layers` causal pre-norm transformer blocks (each character attends to itself
    and the ones before it: self-attention of `heads` heads, then a feed-forward layer of
    `hidden` units with GELU), a final LayerNorm, and a Linear head without bias:

        codes (N, T) -> Embedding(V, E) + PositionalEmbedding(T, E) -> (N, T, E)
                     -> layers x TransformerEncoderLayer(causal) -> LayerNorm(E) -> (N, T, E)
                     -> Linear(E, V) -> (N, T, V) -> Permute(0, 2, 1) -> logits (N, V, T)

    T = seq_len is the block size, the most characters it sees at once. tie: the head's weight
    is the embedding's (one Parameter, listed and updated once; its gradient sums both uses),
    as in nanoGPT and GPT-2. The embedding starts at N(0, 0.02^2), as nanoGPT's (torch's
    N(0, 1) would give a tied head logits of standard deviation sqrt(E))."""
    embedding = tn.Embedding(vocab_size, embed)
    embedding.weight.data *= 0.02
    head = tn.Linear(embed, vocab_size, bias=False)
    if tie:
        head.weight = embedding.weight                        # (V, E) both
    blocks = [tn.TransformerEncoderLayer(embed, heads, hidden, dropout, activation="gelu",
                                         batch_first=True, norm_first=True, causal=True)
              for _ in range(layers)]
    return [embedding, tn.PositionalEmbedding(seq_len, embed), *blocks, tn.LayerNorm(embed),
            head, tn.Permute(0, 2, 1)]


# --model: name -> builder of the layers from vocab_size and the model flags as keywords
# (embed, hidden, seq_len; each takes what it needs). A new architecture is one more builder
# here; its layers must turn codes (N, T) into logits (N, V, T).
MODELS = {"lstm": lstm, "gru": gru, "gpt": gpt}


def build_model(kind, vocab_size, **options):
    """The Sequential that MODELS[kind] builds from options (embed=, hidden=, seq_len=)."""
    return tn.Sequential(MODELS[kind](vocab_size, **options))


# ── writing ────────────────────────────────────────────────────────────────────

RECURRENT = (tn.RNN, tn.LSTM, tn.GRU)


def carried_state(model):
    """A function next_logits(codes) -> logits (V,) of the character after `codes` and after
    every code fed before: the recurrent layer's final state (h_n, and c_n for an LSTM) is kept
    and given back as its initial state hx at the next call, so each call costs len(codes)
    steps, however long the text so far."""
    model.eval()
    layers = list(model)
    r = next(i for i, layer in enumerate(layers) if isinstance(layer, RECURRENT))
    rnn = layers[r]
    state = None                                 # h_0 = c_0 = 0

    def next_logits(codes):
        nonlocal state
        x = np.asarray(codes, dtype=np.int64)[None]          # (1, t)
        for layer in layers[:r]:
            x = layer(x)                                     # (1, t, E)
        x = rnn(x, hx=state)                                 # (1, t, H)
        state = (rnn.h_n, rnn.c_n) if isinstance(rnn, tn.LSTM) else rnn.h_n
        for layer in layers[r + 1:]:
            x = layer(x)                                     # (1, V, t)
        return x[0, :, -1]
    return next_logits


def whole_context(model, block_size=None):
    """A function next_logits(codes) -> logits (V,) that appends codes to the text so far and
    runs the model over all of it again (its last block_size characters when given): the
    O(T^2) way, for a model without a recurrent state (and to check carried_state)."""
    model.eval()
    context = []

    def next_logits(codes):
        context.extend(int(code) for code in codes)
        x = np.array(context[-block_size:] if block_size else context, dtype=np.int64)[None]
        return model.predict(x)[0, :, -1]
    return next_logits


def sample(next_logits, prompt, length, temperature=1.0, rng=None):
    """length codes drawn one at a time after the codes of `prompt`: each from
        p = softmax(logits / temperature)
    (temperature < 1: more likely characters, more repetitive; > 1: more surprising), then fed
    back. next_logits: carried_state(model) or whole_context(model)."""
    rng = np.random.default_rng() if rng is None else rng
    logits = next_logits(prompt)
    codes = []
    for _ in range(length):
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        code = int(rng.choice(len(p), p=p / p.sum()))
        codes.append(code)
        logits = next_logits([code])
    return codes


def writer(model, seq_len):
    """The cheapest next_logits for model: its carried state if it has a recurrent layer, else
    re-running the last seq_len characters (a model that sees at most seq_len of them)."""
    if any(isinstance(layer, RECURRENT) for layer in model):
        return carried_state(model)
    return whole_context(model, seq_len)


# ── the script ─────────────────────────────────────────────────────────────────

GPT_FLAGS = ["--layers", "--heads", "--dropout", "--tie"]        # for --model gpt only


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="lstm",
                        help="the network between the embedding and the output (%(default)s)")
    parser.add_argument("--epochs", type=common.positive_int, default=5,
                        help="passes over the training windows (%(default)s)")
    parser.add_argument("--batch-size", type=common.positive_int, default=64,
                        help="windows per minibatch (%(default)s)")
    parser.add_argument("--seq-len", type=common.positive_int, default=100,
                        help="characters per window: the steps backpropagated through "
                             "(%(default)s)")
    parser.add_argument("--embed", type=common.positive_int, default=64,
                        help="embedding size E (%(default)s)")
    parser.add_argument("--hidden", type=common.positive_int, default=256,
                        help="hidden size H of the recurrent layer, or the width of the GPT "
                             "blocks' feed-forward layer (%(default)s)")
    parser.add_argument("--layers", type=common.positive_int, default=2,
                        help="--model gpt: transformer blocks (%(default)s)")
    parser.add_argument("--heads", type=common.positive_int, default=4,
                        help="--model gpt: attention heads, dividing --embed (%(default)s)")
    parser.add_argument("--dropout", type=common.nonnegative_float, default=0.0,
                        help="--model gpt: dropout in the blocks (%(default)s)")
    parser.add_argument("--tie", action="store_true",
                        help="--model gpt: the head's weight is the embedding's")
    parser.add_argument("--lr", type=common.positive_float, default=3e-3,
                        help="Adam's learning rate (%(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="tinynet.manual_seed, and the sampling's generator (%(default)s)")
    parser.add_argument("--sample", type=common.positive_int, default=500,
                        help="characters to write after training (%(default)s)")
    parser.add_argument("--temperature", type=common.positive_float, default=0.8,
                        help="divides the logits before the softmax when sampling: below 1 "
                             "safer, above 1 wilder (%(default)s)")
    parser.add_argument("--prompt", default="\n",
                        help="the text the sample starts from (default: a newline)")
    parser.add_argument("--data-dir", default=None,
                        help="data folder holding shakespeare/input.txt (default: "
                             "$TINYNET_DATA, else data/)")
    parser.add_argument("--out", default=os.path.join("runs", "train_text"),
                        help="output folder (%(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (smoke test): 1 epoch on 256 training windows, "
                             "validation on 64")
    parser.add_argument("--threads", type=common.threads_flag, default="auto",
                        help="BLAS threads: a number, or auto: try 1 and 2 on the first batches "
                             "and keep the faster (%(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        common.reject_flags(parser, ["--epochs"], "with --quick, which trains 1 epoch", argv)
    if args.model != "gpt":
        common.reject_flags(parser, GPT_FLAGS, f"with --model {args.model} (they are the GPT's)",
                            argv)
    elif args.dropout >= 1:
        parser.error(f"argument --dropout: expected a number in [0, 1), got {args.dropout:g}")
    elif args.embed % args.heads:
        parser.error(f"--heads {args.heads} must divide --embed {args.embed}: each head "
                     f"attends with embed / heads features")
    if not args.prompt:
        parser.error("argument --prompt: expected at least one character, got ''")
    return parser, args


def load_text_or_exit(data_dir):
    """Tiny Shakespeare from <data_dir>/shakespeare/input.txt (downloaded if missing), or exit
    with status 1 saying where to put it."""
    try:
        return tn.load_shakespeare(data_dir)
    except OSError as e:
        common.exit_missing_data("train_text.py", "Tiny Shakespeare", e, ["input.txt"], data_dir,
                                 "shakespeare", "the char-rnn corpus, "
                                 f"{tn.DATA_MIRRORS['shakespeare'][0]}input.txt")


def main(argv=None):
    parser, args = parse_args(argv)
    prompt = args.prompt
    tn.manual_seed(args.seed)
    print("config:", vars(args))

    text = load_text_or_exit(args.data_dir)
    codes, chars = encode(text)
    unknown = sorted(set(prompt) - set(chars))
    if unknown:
        parser.error(f"--prompt: characters not in the text: {''.join(unknown)!r}")
    V = len(chars)
    split = int(0.9 * len(codes))                  # first 90% to train, last 10% to validate
    X_train, Y_train = windows(codes[:split], args.seq_len)
    X_val, Y_val = windows(codes[split:], args.seq_len)
    if args.quick:
        args.epochs = 1
        X_train, Y_train, X_val, Y_val = X_train[:256], Y_train[:256], X_val[:64], Y_val[:64]
    print(f"{len(text):,} characters, {V} distinct; train {len(X_train):,} windows of "
          f"{args.seq_len}, validation {len(X_val):,}")

    model = build_model(args.model, V, embed=args.embed, hidden=args.hidden, seq_len=args.seq_len,
                        layers=args.layers, heads=args.heads, dropout=args.dropout, tie=args.tie)
    optimizer = tn.Adam(model.parameters(), lr=args.lr)
    model.compile(optimizer, tn.CrossEntropyLoss())
    model.summary((args.seq_len,))
    blocks = (f", {args.layers} blocks of {args.heads} heads, dropout {args.dropout:g}"
              + ", head tied to the embedding" * args.tie) if args.model == "gpt" else ""
    description = (f"{args.model} E {args.embed}, H {args.hidden}{blocks}, windows of "
                   f"{args.seq_len}, batch {args.batch_size}, {args.epochs} epochs")
    print(common.describe_run(description, optimizer, None))
    start = time.perf_counter()
    history = model.fit(X_train, Y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(X_val, Y_val), verbose=1,
                        callbacks=common.blas_thread_callbacks(args.threads))
    print(f"trained in {time.perf_counter() - start:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    common.save_model_and_history(model, history, args.out)
    title = f"Tiny Shakespeare, {args.model} E {args.embed} H {args.hidden}, T {args.seq_len}"
    tn.plot_history(history, os.path.join(args.out, "loss.png"), keys=("loss",), title=title)
    tn.plot_batch_loss(history, os.path.join(args.out, "batch_loss.png"), title=title)

    start = time.perf_counter()
    written = sample(writer(model, args.seq_len), encode(prompt, chars)[0], args.sample,
                     args.temperature, np.random.default_rng(args.seed))
    seconds = time.perf_counter() - start
    print(f"--- {args.sample} characters at temperature {args.temperature:g} "
          f"({seconds:.2f} s) ---")
    print(prompt + decode(written, chars))
    print("---")
    print(f"saved model.npz, history.csv, loss.png and batch_loss.png in {args.out}")
    val_loss = model.evaluate(X_val, Y_val)["loss"]
    print(f"validation loss: {val_loss:.4f}")


if __name__ == "__main__":
    main()
