"""scalegpt tokenizer train --input FILE_OR_DIR... --vocab-size N [--model-type bpe|unigram] --out PREFIX"""
from __future__ import annotations


def register(sub) -> None:
    from scalegpt.cli.numbers import add_integer

    p = sub.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    t = tsub.add_parser("train", help="train a SentencePiece model on text files or folders")
    t.add_argument("--input", nargs="+", required=True,
                   help="files or folders (searched recursively), read as `scalegpt prepare` reads them: text, JSON "
                        "lines, parquet, optionally .gz/.zst/.bz2")
    t.add_argument("--text-field", default="text", help="the text field of JSON lines / parquet records")
    add_integer(t, "--vocab-size", 1, 2**20, required=True, help="number of pieces in the vocabulary")
    t.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    t.add_argument("--out", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    add_integer(t, "--max-sentences", 1, 10**9, default=2_000_000, help="lines sampled for training")
    t.set_defaults(func=run_train)


def run_train(args) -> int:
    from scalegpt.outputs import check_output, check_output_path
    from scalegpt.sources import describe_skipped
    from scalegpt.tokenizer import SentencePieceTokenizer, train_sentencepiece

    check_output_path(args.out)
    for suffix in (".model", ".vocab"):  # replaced only when they are a SentencePiece model of a previous run
        check_output(args.out + suffix, kind="tokenizer", inputs=args.input, reuse=True)
    skipped: list = []
    path = train_sentencepiece(args.input, args.vocab_size, args.out, model_type=args.model_type,
                               max_sentences=args.max_sentences, text_field=args.text_field, skipped=skipped)
    if describe_skipped(skipped):
        print(f"tokenizer train: {describe_skipped(skipped)}")
    tok = SentencePieceTokenizer.from_file(path)
    print(f"wrote {path} (vocab_size {tok.vocab_size}, end-of-text id {tok.eot_id}); "
          f"use it with --tokenizer {path}")
    return 0
