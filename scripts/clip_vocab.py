"""OpenAI CLIP's BPE vocabulary layout, for the small tokenizers genie's scripts write.

Shared by tests/parity/make_fixtures.py (the parity fixtures' tokenizer) and
scripts/shapes-model/train.py (the shapes model's): the 256 byte symbols, the same with `</w>`,
one entry per merge, then `<|startoftext|>` and `<|endoftext|>`, as OpenAI's SimpleTokenizer
builds it. Plain Python, no third-party imports.
"""

import json
import os


def bytes_to_unicode():
    """Exactly OpenAI CLIP's / GPT-2's byte -> unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build_vocab(merges):
    """Token -> id for the byte symbols, their `</w>` forms, each merge's result, then the
    start and end tokens; every merge must join two known tokens into a new one."""
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    known = set(vocab)
    for a, b in merges:
        assert a in known and b in known, f"invalid merge {a!r} {b!r}"
        assert a + b not in known, f"duplicate merge result {a + b!r}"
        vocab.append(a + b)
        known.add(a + b)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    return {tok: i for i, tok in enumerate(vocab)}


def write_vocab_and_merges(folder, vocab, merges):
    """Writes `vocab.json` and `merges.txt` (version 0.2 header) into `folder`."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
