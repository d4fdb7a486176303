"""SentencePiece ("llama" tokenizer.ggml.model) GGUF fixture: tests/fixtures/spm/.

    nice -n 19 /opt/refenv/bin/python scripts/make_spm_fixture.py

What it makes (deterministic; rerunning rewrites the same files):
  tests/fixtures/spm/tokenizer.model           a tiny SentencePiece BPE model trained here on CORPUS below
                                               (byte_fallback, split_digits, add_dummy_prefix, identity
                                               normalisation, remove_extra_whitespaces=False like Llama's;
                                               unk=0, bos=1, eos=2, no pad)
  tests/fixtures/spm/model-f32.gguf            a random tiny Mixtral (MixtralConfig below) around that vocabulary,
                                               converted by llama.cpp's convert_hf_to_gguf.py --outtype f32, which
                                               takes its SentencePiece path (_set_vocab_sentencepiece: reads
                                               tokenizer.model, writes tokenizer.ggml.model = "llama")
  tests/fixtures/spm/tokenizer_reference.json  for each of TEST_STRINGS: the ids from sentencepiece itself
                                               (sp.encode, no BOS) and from transformers' LlamaTokenizerFast built
                                               from tokenizer.model with legacy=True (add_special_tokens False and
                                               True), both decodes, and where they differ; also the fast
                                               tokenizer's tokenizer.json settings (everything but vocab/merges)
                                               and the GGUF's tokenizer.ggml.* keys.
The HF checkpoint (safetensors, config, tokenizer.json/tokenizer_config.json) lives only in a temporary directory.
Sizes: model-f32.gguf ~710 KB (the weights: hidden 64, 2 layers, 4 experts x 64, vocab 400, all F32), tokenizer.model
~6 KB, tokenizer_reference.json ~18 KB. Shrinking MIXTRAL to hidden_size 32 / intermediate_size 32 would bring the
GGUF to roughly 240 KB, at head_dim 8.

Known difference (recorded per case in the JSON): for text that starts with a space, sentencepiece (and llama.cpp's
SPM tokenizer with add_space_prefix) still prepends U+2581, giving two; transformers 5's Metaspace pre-tokenizer
does not prepend when the text already starts with one. transformers 4.x's legacy normalizer (hf_v4_legacy_ids)
matches sentencepiece.

Versions used to make the committed files: sentencepiece 0.2.3, transformers 5.23.0, tokenizers 0.23.3,
torch 2.15.0, and llama.cpp's converter and gguf-py from the llama-cpp-python 0.3.36 sdist
(vendor/llama.cpp, llama.cpp commit 0c1e57098, gguf-py 0.19.0) unpacked in
~/.cache/moeserve/llama_cpp_python-0.3.36 (see scripts/make_gguf_fixtures.py for how it gets there; LLAMA_CPP
overrides the path). Nothing of llama.cpp enters the repository.
"""

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "spm"
LLAMA_CPP = Path(os.environ.get(
    "LLAMA_CPP", Path.home() / ".cache" / "moeserve" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"))

VOCAB_SIZE = 400
SEED = 1234

# Small varied corpus: English prose, punctuation, digits, code-ish text, accented Latin, a little CJK.
# Characters NOT in it (e.g. 漢, 字, emoji) can only be encoded through the <0xNN> byte tokens.
CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away!
She sells sea shells by the sea shore, and the shells she sells are surely sea shells.
How much wood would a woodchuck chuck if a woodchuck could chuck wood?
It was the best of times, it was the worst of times, it was the age of wisdom.
In 1984, there were 365 days; in 2024 there were 366. Call 555-0123 at 10:45 p.m.
Prices: $3.50, $12.99, and 100% of 7/8 is 0.875 -- not 42!
"Hello," she said. "Is this the right place?" He replied: 'Yes, of course.'
Lists (a), (b) and [c] are {curly}; e-mail: someone@example.com #tag @user ~tilde ^caret
def main(args): return sum(x * 2 for x in range(10)) if args else None
for (int i = 0; i < n; ++i) { total += values[i]; }
The café on the corner serves crème brûlée and a naïve rosé to the façade's señor.
Über den Wolken muss die Freiheit wohl grenzenlos sein. Ça va? Déjà vu, garçon!
El niño comió piña en la mañana.
東京は日本の首都です。
Machine learning models learn patterns from data, and tokenizers split text into pieces.
A tokenizer maps text to integer ids; a detokenizer maps the ids back to text.
Spaces matter:  two spaces,   three spaces, and a tab\there.
Numbers 0 1 2 3 4 5 6 7 8 9 and 12345 67890 are split into single digits.
The mixture of experts routes every token to the top two of its experts.
Once upon a time, in a land far away, there lived a small model with a tiny vocabulary.
Questions? Answers! Ellipses... Dashes - and -- and underscores_in_names.
Water boils at 100 degrees; ice melts at 0. Light travels 299792458 metres per second.
The library opens at 9 and closes at 17, Monday to Friday, except on holidays.
Reading, writing and arithmetic were taught in the old school house by the river.
"""

TEST_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "multiple   spaces  here",
    "   ",
    "line one\nline two\n\nend",
    "digits 12345 and 3.14",
    "Punctuation: (a), [b], {c}; 'quotes' \"double\"?!",
    "café naïve",
    "漢字",
    "emoji 🙂 ok",
    "",
    "tab\tseparated",
]

MIXTRAL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
    num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=False, sliding_window=None,
)


def train_spm() -> bytes:
    import sentencepiece as spm
    spm.set_random_generator_seed(SEED)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=model,
        model_type="bpe", vocab_size=VOCAB_SIZE, byte_fallback=True, split_digits=True,
        add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, seed_sentencepiece_size=100000, shuffle_input_sentence=False, input_sentence_size=0,
        minloglevel=2,
    )
    return model.getvalue()


def write_checkpoint(d: Path, vocab_size: int):
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM
    torch.manual_seed(SEED)
    cfg = MixtralConfig(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=None, **MIXTRAL)
    model = MixtralForCausalLM(cfg).to(torch.float32).eval()
    with torch.no_grad():  # make the (random) weights visible: default init leaves norms at 1 and is tiny
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.save_pretrained(d)
    (d / "tokenizer.model").write_bytes((OUT / "tokenizer.model").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "add_bos_token": True, "add_eos_token": False, "legacy": True,
        "clean_up_tokenization_spaces": False, "model_max_length": MIXTRAL["max_position_embeddings"],
    }, indent=2))
    (d / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2))


def convert(d: Path, out: Path):
    env = dict(os.environ, PYTHONPATH=str(LLAMA_CPP / "gguf-py"))
    subprocess.run([sys.executable, str(LLAMA_CPP / "convert_hf_to_gguf.py"), str(d), "--outtype", "f32",
                    "--outfile", str(out)], check=True, env=env, cwd=LLAMA_CPP)


def gguf_tokenizer_keys(path: Path) -> dict:
    sys.path.insert(0, str(LLAMA_CPP / "gguf-py"))
    import gguf
    r = gguf.GGUFReader(str(path))
    keys = {}
    for name, f in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        t = f.types[0].name
        if t == "ARRAY":
            sub = f.types[-1].name
            vals = [f.contents(i) for i in range(len(f.data))]
            info = {"type": f"ARRAY[{sub}]", "len": len(vals)}
            if name == "tokenizer.ggml.token_type":
                toks = r.fields["tokenizer.ggml.tokens"].contents()
                by = {}
                for tok, ty in zip(toks, vals):
                    by.setdefault(ty, []).append(tok)
                info["values"] = {str(ty): {"count": len(v), "first": v[:4]} for ty, v in sorted(by.items())}
            elif name == "tokenizer.ggml.scores":
                info["first8"] = vals[:8]
                info["min_max"] = [min(vals), max(vals)]
            else:
                info["first8"] = vals[:8]
        else:
            info = {"type": t, "value": f.contents()}
        keys[name] = info
    return keys


def fast_tokenizer(tok_dir: Path):
    from transformers import LlamaTokenizerFast
    return LlamaTokenizerFast.from_pretrained(str(tok_dir), legacy=True)


def main():
    import sentencepiece as spm
    import transformers
    import tokenizers
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tokenizer.model").write_bytes(train_spm())
    sp = spm.SentencePieceProcessor(model_file=str(OUT / "tokenizer.model"))
    n_vocab = sp.vocab_size()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ck = tmp / "hf"
        write_checkpoint(ck, n_vocab)

        # The fast tokenizer, converted from tokenizer.model alone (no tokenizer.json in its dir).
        tdir = tmp / "tok"
        tdir.mkdir()
        for f in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(ck / f, tdir / f)
        fast = fast_tokenizer(tdir)
        saved = tmp / "tok_saved"
        fast.save_pretrained(str(saved))
        # A real Llama/Mistral checkpoint ships tokenizer.json next to tokenizer.model; the converter still takes
        # the SentencePiece path (tokenizer.model wins), but gguf.SpecialVocab reads the special-token ids
        # (unk/bos/eos) from tokenizer.json's added_tokens.
        shutil.copy(saved / "tokenizer.json", ck / "tokenizer.json")
        tj = json.loads((saved / "tokenizer.json").read_text())
        model_settings = {k: v for k, v in tj["model"].items() if k not in ("vocab", "merges")}
        model_settings["vocab_len"] = len(tj["model"]["vocab"])
        model_settings["merges_len"] = len(tj["model"]["merges"])
        fast_settings = {k: tj.get(k) for k in ("normalizer", "pre_tokenizer", "decoder", "post_processor")}
        fast_settings["model"] = model_settings
        fast_settings["added_tokens"] = tj.get("added_tokens")
        fast_settings["class"] = type(fast).__name__

        # transformers 4.x's LlamaConverter with legacy=True: normalizer Prepend("▁") + Replace(" ", "▁"), no
        # pre-tokenizer (transformers 5 uses Metaspace(prepend_scheme="always", split=False) instead, which does
        # not prepend when the text already starts with a space).
        from tokenizers import Tokenizer, normalizers
        v4 = Tokenizer.from_str(json.dumps(tj))
        v4.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        v4.pre_tokenizer = None
        v4.post_processor = None

        convert(ck, OUT / "model-f32.gguf")
        gkeys = gguf_tokenizer_keys(OUT / "model-f32.gguf")
        assert gkeys["tokenizer.ggml.model"]["value"] == "llama", gkeys["tokenizer.ggml.model"]

    cases = []
    n_diff = 0
    for text in TEST_STRINGS:
        sp_ids = sp.encode(text)
        hf_ids = fast(text, add_special_tokens=False)["input_ids"]
        hf_bos = fast(text, add_special_tokens=True)["input_ids"]
        c = {
            "text": text,
            "sp_ids": sp_ids,
            "sp_pieces": sp.id_to_piece(sp_ids),
            "sp_decode": sp.decode(sp_ids),
            "hf_ids": hf_ids,
            "hf_ids_with_special": hf_bos,
            "hf_decode": fast.decode(hf_ids, skip_special_tokens=False),
            "hf_decode_with_special": fast.decode(hf_bos, skip_special_tokens=False),
            "hf_v4_legacy_ids": v4.encode(text).ids,
        }
        diffs = []
        if sp_ids != hf_ids:
            diffs.append("ids")
        if c["sp_decode"] != c["hf_decode"]:
            diffs.append("decode")
        if c["hf_v4_legacy_ids"] != sp_ids:
            diffs.append("hf_v4_legacy_ids")
        if diffs:
            n_diff += 1
            c["differs"] = diffs
        cases.append(c)

    ref = {
        "generator": "scripts/make_spm_fixture.py",
        "versions": {"sentencepiece": spm.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "vocab_size": n_vocab,
        "special_ids": {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "pad": sp.pad_id()},
        "sp_vs_hf": ("sentencepiece and the fast tokenizer agree on every case" if n_diff == 0 else
                     f"{n_diff} case(s) differ; see 'differs' in cases"),
        "notes": {
            "sp_ids": "sentencepiece.SentencePieceProcessor.encode(text): add_dummy_prefix always prepends one "
                      "U+2581, even when the text already starts with a space; no BOS",
            "hf_ids": "transformers LlamaTokenizerFast.from_pretrained(dir with tokenizer.model only, legacy=True), "
                      "add_special_tokens=False; hf_ids_with_special: add_special_tokens=True (BOS id 1)",
            "hf_v4_legacy_ids": "the same tokenizer.json with transformers 4.x's legacy normalizer "
                                "(Prepend U+2581, Replace ' ' -> U+2581) instead of the Metaspace pre-tokenizer",
            "decodes": "skip_special_tokens=False",
        },
        "cases": cases,
        "fast_tokenizer_settings": fast_settings,
        "gguf_tokenizer_keys": gkeys,
    }
    (OUT / "tokenizer_reference.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({"gguf": gkeys, "fast": fast_settings, "sp_vs_hf": ref["sp_vs_hf"]}, indent=1,
                     ensure_ascii=False)[:20000])
    for p in sorted(OUT.iterdir()):
        print(p.relative_to(ROOT), p.stat().st_size)


if __name__ == "__main__":
    main()
