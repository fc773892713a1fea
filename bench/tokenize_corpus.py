"""A natural, non-replicated JSONL corpus for the tokenize bench, assembled from text that is on every dev box.

Why not the shared corpora copied N times: a cache of encoded segments (ours) turns every later copy into hits, so a
replicated input measures the cache, not tokenisation. Here no document occurs twice (deduplicated by content) and
the mixture is what a pre-training run meets: Chinese prose and dialogue, English abstracts and dialogue, Python
source, licences and docs, plus the edge cases that break tokenisers.

Recipe (``build_corpus``; every choice is seeded or sorted, so the same machine state gives the same bytes; the
bench prints the SHA-256 and the per-component counts):

1. ``shared``: every document of the shared data once (``../shared/data``: PubMed and NCBI abstracts, the Chinese
   textbook in 8-line paragraphs, the GB18030 doctor Q&A blocks, the ShareGPT/CMtMedQA/Huatuo-26M/ChatDoctor SFT
   sets as dialogue text, the unified question/answer examples).
2. ``code``: Python source files of the installed packages (``site-packages``, ordered by a hash of the relative path so every
   package contributes, one file per document),
   up to ``CODE_SHARE`` of the target size.
3. ``docs``: licences, READMEs, METADATA, ``.rst``/``.md``/``.txt`` of the installed packages and
   ``/usr/share/doc/*/copyright`` (same order, one file per document), up to ``DOCS_SHARE``.
4. ``generated_zh``: Chinese made by a seeded order-3 character Markov chain trained on the shared Chinese text
   (so clauses are new, not copies), paragraphs of natural lengths, until the target size is reached.
5. ``edge``: empty and whitespace-only texts, ``\\r\\n`` line ends, control characters, emoji and other astral
   characters, literal ``▁``, runs of spaces and tabs, pre-split sentence lists (with empty elements), lines
   written with ``\\uXXXX`` escapes, and two single lines of about 2 MB (generated Chinese without a line break;
   a minified run of source code).

Documents are shuffled with a fixed seed so every worker's byte range holds the same mixture.
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
import sysconfig
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

CODE_SHARE = 0.25
DOCS_SHARE = 0.15
SEED = 14
_MAX_FILE = 400_000  # bytes: larger source/doc files (generated tables, vendored bundles) are skipped


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def shared_documents(shared: Path) -> List[str]:
    """Every document of the shared data, once."""
    docs: List[str] = list(_read_json(shared / "corpora/en/pubmed_abstracts_299.json"))
    abstract: List[str] = []
    for line in (shared / "corpora/en/ncbi_disease_train.pubtator.txt").read_text(encoding="utf-8").splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3 and parts[1] in ("t", "a"):
            abstract.append(parts[2])
            if parts[1] == "a":
                docs.append("\n".join(abstract))
                abstract = []
    lines = [x for x in (shared / "corpora/zh/infectious_disease_textbook.txt").read_text(encoding="utf-8")
             .splitlines() if x.strip()]
    docs += ["\n".join(lines[i:i + 8]) for i in range(0, len(lines), 8)]
    qa = (shared / "corpora/zh/internal_medicine_qa.gb18030.txt").read_bytes().decode("gb18030", errors="replace")
    docs += [b for b in qa.split("\n\n") if b.strip()]
    for line in (shared / "sft/zh/medical_sft_1k.sharegpt.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            docs.append("\n".join(t["value"] for t in json.loads(line)["conversations"]))
    for row in _read_json(shared / "sft/zh/cmtmedqa_multiturn_1144.json"):
        turns = [x for pair in row.get("history") or [] for x in pair] + [row.get("instruction", row.get("instruct", "")),
                                                                       row["output"]]
        docs.append("\n".join(turns))
    for row in _read_json(shared / "sft/zh/huatuo26m_sample_6000.json"):
        docs.append("\n".join(row["instruction"] + row["output"]))
    for row in _read_json(shared / "sft/en/chatdoctor_5k.json"):
        docs.append("\n".join(x for x in (row["instruction"], row["input"], row["output"]) if x))
    for path in sorted((shared / "unified_examples").glob("*.json")):
        docs += ["\n".join(pair) for pair in _read_json(path)]
    return docs


def _files(roots: List[Path], want) -> Iterator[Tuple[Path, str]]:
    for root in roots:
        if not root.is_dir():
            continue
        # in the order of a hash of the relative path: every package contributes, reproducibly
        chosen = (p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and want(p))
        for path in sorted(chosen, key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).hexdigest()):
            if path.stat().st_size > _MAX_FILE:
                continue
            try:
                yield path, path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue


def _is_doc(p: Path) -> bool:
    name = p.name
    return (p.suffix in (".md", ".rst", ".txt") or name.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE"))
            or name in ("METADATA", "copyright")) and "__pycache__" not in p.parts


def package_files(budget: int, want, roots: List[Path], seen: set) -> List[str]:
    """Distinct files (by content) under ``roots`` that ``want`` selects, in path order, up to ``budget`` bytes."""
    out, used = [], 0
    for _, text in _files(roots, want):
        if not text.strip() or text in seen:
            continue
        seen.add(text)
        out.append(text)
        used += len(text.encode("utf-8"))
        if used >= budget:
            break
    return out


class MarkovChinese:
    """Order-3 character Markov chain over real Chinese text: new clauses with natural character statistics."""

    def __init__(self, texts: List[str], order: int = 3):
        self.order = order
        table: Dict[str, List[str]] = {}
        for t in texts:
            for i in range(len(t) - order):
                table.setdefault(t[i:i + order], []).append(t[i + order])
        self.next = {k: "".join(v) for k, v in table.items()}
        self.starts = sorted(k for k in self.next if "\n" not in k)

    def paragraph(self, rng: random.Random, n_chars: int) -> str:
        state = rng.choice(self.starts)
        out = [state]
        for _ in range(n_chars):
            nxt = self.next.get(state)
            if not nxt:
                state = rng.choice(self.starts)
                out.append(state)
                continue
            c = nxt[rng.randrange(len(nxt))]
            if c == "\n":
                break
            out.append(c)
            state = state[1:] + c
        return "".join(out)

    def document(self, rng: random.Random) -> str:
        return "\n".join(self.paragraph(rng, int(rng.lognormvariate(4.8, 0.8))) for _ in range(rng.randint(1, 12)))


def _chinese_share(t: str) -> float:
    return sum("\u4e00" <= c <= "\u9fff" for c in t) / max(1, len(t))


def edge_documents(rng: random.Random, markov: MarkovChinese, code: List[str]) -> List[object]:
    """Texts that break tokenisers; a list is a pre-split document (one sequence per non-empty string)."""
    docs: List[object] = ["", " ", "   ", "\n", "\n\n\n", "\t", " \t \n ", "\r\n", "\u3000", "\u2581", "\u2581\u2581 \u2581",
                          ["", ""], [], ["only one"], ["", "second after empty", ""]]
    for i in range(300):
        base = markov.paragraph(rng, rng.randint(10, 80))
        kind = i % 10
        if kind == 0:
            docs.append(base.replace("。", "。\r\n"))
        elif kind == 1:
            docs.append("".join(chr(rng.randrange(0, 32)) if rng.random() < 0.1 else c for c in base) + "\x7f\x00")
        elif kind == 2:
            docs.append(" ".join(base[j:j + 5] + chr(rng.choice([0x1F600, 0x1F9EC, 0x1F489, 0x20000, 0x2A6D6,
                                                                    0x1F468]) + rng.randrange(20))
                                 for j in range(0, len(base), 5)))
        elif kind == 3:
            docs.append(base.replace("，", " \u2581 ").replace("的", "\u2581\u2581"))
        elif kind == 4:
            docs.append(" " * rng.randint(1, 40) + base + "\t" * rng.randint(1, 5) + " " * rng.randint(1, 9))
        elif kind == 5:
            docs.append([s for s in base.split("，")] + [""])
        elif kind == 6:
            docs.append("ﬁ ﬂ Ⅻ ①②③ ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ é e\u0301 " + base)  # NFKC-sensitive forms
        elif kind == 7:
            docs.append(base + "\ufeff\u200b\u200d" + base[::-1])
        elif kind == 8:
            docs.append("".join(rng.choice("\u0300\u0301\u0302\u0308") + c for c in base[:40]))
        else:
            docs.append(base.replace("。", "\u2028").replace("，", "\u00a0"))
    long_zh = []
    while sum(map(len, long_zh)) * 3 < 2_000_000:
        long_zh.append(markov.paragraph(rng, 400))
    docs.append("".join(long_zh))  # ~2 MB on one line, no break
    minified, size = [], 0
    for text in code:
        line = " ".join(text.split())
        minified.append(line)
        size += len(line)
        if size > 2_000_000:
            break
    docs.append(" ".join(minified))
    return docs


def build_corpus(path: Path, target_mb: float, shared: Path) -> dict:
    """Write the corpus to ``path`` (JSONL, key ``text``); returns its manifest (sizes per component, SHA-256)."""
    rng = random.Random(SEED)
    target = int(target_mb * 1e6)
    parts: Dict[str, List[object]] = {"shared": shared_documents(shared)}
    seen = set(d for d in parts["shared"] if isinstance(d, str))
    site = [Path(p) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]
    parts["code"] = package_files(int(target * CODE_SHARE), lambda p: p.suffix == ".py", sorted(site), seen)
    parts["docs"] = package_files(int(target * DOCS_SHARE), _is_doc, sorted(site) + [Path("/usr/share/doc")], seen)
    zh = [d for d in parts["shared"] if _chinese_share(d) > 0.3]
    markov = MarkovChinese(zh)
    parts["edge"] = edge_documents(rng, markov, parts["code"][::7])

    def size(docs) -> int:
        return sum(len(json.dumps({"text": d}, ensure_ascii=False).encode("utf-8")) + 1 for d in docs)

    have = sum(size(v) for v in parts.values())
    gen: List[str] = []
    while have < target:
        d = markov.document(rng)
        if d in seen:
            continue
        seen.add(d)
        gen.append(d)
        have += size([d])
    parts["generated_zh"] = gen
    tagged, keys = [], set()
    for name, docs in parts.items():
        for d in docs:
            key = json.dumps(d)
            if key not in keys:  # the shared data repeats some dialogues: every document once
                keys.add(key)
                tagged.append((name, d))
    rng.shuffle(tagged)
    digest = hashlib.sha256()
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for i, (name, d) in enumerate(tagged):
            # every 50th line with \uXXXX escapes (Python's default json.dumps), the rest as UTF-8
            line = json.dumps({"text": d}, ensure_ascii=(i % 50 == 0)) + "\n"
            fh.write(line)
            digest.update(line.encode("utf-8"))
    counts, nbytes = Counter(name for name, _ in tagged), Counter()
    for name, d in tagged:
        nbytes[name] += size([d])
    return {"path": str(path), "documents": len(tagged), "bytes": path.stat().st_size, "sha256": digest.hexdigest(),
            "components": {name: {"documents": counts[name], "bytes": nbytes[name]} for name in parts},
            "python": sys.version.split()[0]}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--target-mb", type=float, default=32.0)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    a = ap.parse_args()
    print(json.dumps(build_corpus(a.out, a.target_mb, a.shared), indent=1))
