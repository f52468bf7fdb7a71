"""scalegpt check DIR: verify every shard of a prepared dataset (length, dtype, token ids within the vocabulary,
sha256) against meta.json."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("check", help="verify a prepared dataset's shards against meta.json (checksums)")
    p.add_argument("dir", metavar="DIR", help="dataset directory written by `scalegpt prepare`")
    p.set_defaults(func=run)


def run(args) -> int:
    from scalegpt.data import check_dataset
    from scalegpt.errors import ScalegptError

    rows = check_dataset(args.dir)
    width = max([len(r["file"]) for r in rows] + [5])
    print(f"{'split':<6} {'shard':<{width}} {'tokens':>14} {'dtype':<7} {'max id':>7} status")
    for r in rows:
        largest = r.get("largest", "?")  # the id found in the shard (unreadable shards: "?")
        print(f"{r['split']:<6} {r['file']:<{width}} {r['num_tokens']:>14,} {r['dtype']:<7} {largest:>7} "
              f"{'ok' if r['ok'] else 'BAD'}")
    bad = [r for r in rows if not r["ok"]]
    total = sum(r["num_tokens"] for r in rows)
    if bad:
        raise ScalegptError(f"{len(bad)} of {len(rows)} shards failed; first: {bad[0]['problem']}")
    print(f"all {len(rows)} shards ok ({total:,} tokens, checksums verified, every id within the vocabulary)")
    return 0
