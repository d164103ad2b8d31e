"""Regenerate gr_gdmcom/codec/assets/tiny_tokenizer/{vocab.json,merges.txt}.

A byte-level BPE vocabulary in CLIP's format, small enough for the tiny test
text encoder (vocab_size 1000): every byte, every byte ending a word, a few
merges for the default prompt, and CLIP's two special tokens.  Run once; the
files are committed so nothing is downloaded.
"""

import json
from pathlib import Path


def bytes_to_unicode():
    # CLIP/GPT-2's reversible byte -> unicode map.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def main():
    out = Path(__file__).resolve().parent.parent / "gr_gdmcom" / "codec" / "assets" / "tiny_tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars]
    words = ["high", "quality", "res", "8k", "photo", "image", "a", "of", "the"]
    merges = []
    for w in words:
        # merge left to right: h i -> hi, hi g -> hig, hig h</w> -> high</w>
        toks = list(w[:-1]) + [w[-1] + "</w>"]
        while len(toks) > 1:
            pair = (toks[0], toks[1])
            merged = pair[0] + pair[1]
            if pair not in merges:
                merges.append(pair)
            if merged not in vocab:
                vocab.append(merged)
            toks = [merged] + toks[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False, indent=0))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    print(f"{len(vocab)} tokens, {len(merges)} merges -> {out}")


if __name__ == "__main__":
    main()
