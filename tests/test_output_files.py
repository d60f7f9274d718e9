"""The files beside the weights in every output folder: the chat template, the source's generation settings and
the sentence-transformers modules (corrected for the target's width, or left out when not understood), the same
from a folder, a Hub id, the in-memory and the streamed shrink."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers as T

from interprune.hf.generation import copy_generation_config
from interprune.hf.models import load_model, save
from interprune.hf.processors import copy_processor_files
from interprune.stream import stream_shrink
from interprune.weights.shrink import shrink

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "rock", "of", "ore", "is", "grey"]
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
GENERATION = dict(do_sample=True, temperature=0.7, top_p=0.8, eos_token_id=[1, 2], max_new_tokens=77)
CUT = {"hidden_size": 16, "intermediate_size": 32}
# sentence-transformers' files as all-MiniLM-L6-v2 ships them (its 2_Normalize has no folder), CLS pooling so that
# losing them (sentence-transformers then mean-pools) shows in the embeddings
MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
POOLING = {"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
           "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
ST_FILES = ["1_Pooling/config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json"]


def chat_model(folder):
    """A tiny Qwen2 causal LM with a word-level tokenizer that has a chat template, and sampling settings."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    model = T.Qwen2ForCausalLM(T.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=60,
                                             max_position_embeddings=32)).eval()
    model.generation_config = T.GenerationConfig(**GENERATION)
    model.save_pretrained(folder, max_shard_size="20KB")  # sharded: the streamed shrink reads it lazily
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = T.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(folder)
    assert (folder / "chat_template.jinja").is_file() and (folder / "generation_config.json").is_file()
    return folder


def sentence_model(folder, modules=MODULES):
    """A tiny BERT with a tokenizer and all-MiniLM-L6-v2's sentence-transformers files."""
    torch.manual_seed(0)
    T.BertModel(T.BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             vocab_size=len(WORDS), max_position_embeddings=16)).eval().save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    T.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"__version__": {"transformers": "4.6.1"}}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(POOLING, indent=2))
    return folder


def both_shrinks(source, tmp_path, cut=CUT):
    """The in-memory shrink saved, and the streamed (data-free) one: the two ways an output folder is written."""
    model, report = shrink(source, cut, "select")
    memory = save(model, tmp_path / "memory", report=report, source=source)
    stream_shrink(source, cut, "select", tmp_path / "streamed")
    return memory, tmp_path / "streamed"


def st_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.json")
                  if p.name not in ("config.json", "tokenizer.json", "tokenizer_config.json", "interprune.json",
                                    "special_tokens_map.json", "model.safetensors.index.json")
                  or p.parent != folder)


def test_chat_template_and_generation_settings_reach_both_shrinks(tmp_path):
    source = chat_model(tmp_path / "source")
    for out in both_shrinks(source, tmp_path):
        assert T.AutoTokenizer.from_pretrained(out).chat_template == TEMPLATE
        # the source's settings, not the default save_pretrained derives from the config (_from_model_config)
        assert (out / "generation_config.json").read_bytes() == (source / "generation_config.json").read_bytes()
        loaded = T.GenerationConfig.from_pretrained(out)
        assert (loaded.temperature, loaded.top_p, loaded.eos_token_id, loaded.max_new_tokens) == (0.7, 0.8, [1, 2], 77)
    assert not list(tmp_path.glob(".*"))  # written inside the temporary folder, renamed with the rest


def test_sentence_transformers_files_are_copied_with_the_target_width(tmp_path):
    source = sentence_model(tmp_path / "source")
    for out in both_shrinks(source, tmp_path, {**CUT, "max_position_embeddings": 12}):
        assert st_files(out) == ST_FILES
        pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
        assert pooling == {**POOLING, "word_embedding_dimension": 16}
        assert json.loads((out / "modules.json").read_text()) == MODULES
        # the shrink cut the positions to 12: a longer max_seq_length would index past them
        assert json.loads((out / "sentence_bert_config.json").read_text()) == {"max_seq_length": 12,
                                                                               "do_lower_case": False}
        assert not (out / "2_Normalize").exists()  # the source has none: sentence-transformers needs none


def test_sentence_transformers_loads_the_output_and_pools_as_the_source_did(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    source = sentence_model(tmp_path / "source")
    model, report = shrink(source, CUT, "select")
    out = save(model, tmp_path / "out", report=report, source=source)
    encoder = st.SentenceTransformer(str(out), device="cpu")
    dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    assert dimension() == 16
    texts = ["a rock of ore", "grey ore is a rock"]
    got = encoder.encode(texts, convert_to_tensor=True)
    batch = T.AutoTokenizer.from_pretrained(out)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = load_model(out)(**batch).last_hidden_state[:, 0]
    want = torch.nn.functional.normalize(cls, dim=-1)  # the source's modules: CLS pooling, then Normalize
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("extra", [
    # a Dense layer: its weights keep the source's width
    {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"},
    {"idx": 3, "name": "3", "path": "../escape", "type": "sentence_transformers.models.Normalize"},
])
def test_a_module_not_understood_means_no_sentence_transformers_files(tmp_path, extra):
    source = sentence_model(tmp_path / "source", MODULES + [extra])
    model, report = shrink(source, CUT, "select")
    out = save(model, tmp_path / "out", report=report, source=source)
    assert st_files(out) == [] and not (out / "1_Pooling").exists()
    assert (out / "vocab.txt").is_file() and (out / "tokenizer_config.json").is_file()  # the rest still travels


def test_a_hub_id_gets_the_same_files(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repo = sentence_model(tmp_path / "repo")
    shutil.copy2(chat_model(tmp_path / "chat") / "chat_template.jinja", repo / "chat_template.jinja")
    T.GenerationConfig(**GENERATION).save_pretrained(repo)
    asked = []

    def download(repo_id, filename, **kwargs):
        assert repo_id == "someone/tiny"
        asked.append(filename)
        if not (repo / filename).is_file():
            raise EntryNotFoundError(f"404 {filename}")
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    dest = tmp_path / "dest"
    dest.mkdir()
    T.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                 vocab_size=len(WORDS), max_position_embeddings=16).save_pretrained(dest)  # the target's, first
    copy_processor_files("someone/tiny", dest)
    assert "chat_template.json" in asked and "1_Pooling/config.json" in asked
    assert (dest / "chat_template.jinja").read_text() == TEMPLATE
    assert T.GenerationConfig.from_pretrained(dest).temperature == 0.7
    assert json.loads((dest / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 16
    assert json.loads((dest / "sentence_bert_config.json").read_text())["max_seq_length"] == 16  # positions kept


def test_whisper_alignment_heads_are_dropped_when_the_decoder_is_cut(tmp_path):
    source, same, cut = tmp_path / "source", tmp_path / "same", tmp_path / "cut"
    tiny = dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2)
    T.WhisperConfig(**tiny).save_pretrained(source)
    T.GenerationConfig(alignment_heads=[[1, 0], [1, 1]], no_timestamps_token_id=3).save_pretrained(source)
    T.WhisperConfig(**{**tiny, "d_model": 8}).save_pretrained(same)  # narrower, same decoder layers and heads
    T.WhisperConfig(**{**tiny, "decoder_layers": 1}).save_pretrained(cut)  # layer 1 is gone
    assert copy_generation_config(source, same) and copy_generation_config(source, cut)
    assert T.GenerationConfig.from_pretrained(same).alignment_heads == [[1, 0], [1, 1]]
    settings = json.loads((cut / "generation_config.json").read_text())
    assert "alignment_heads" not in settings and settings["no_timestamps_token_id"] == 3


def test_recover_writes_the_module_folders_over_an_earlier_output(tmp_path):
    from interprune.recover.run import _write_model

    source = sentence_model(tmp_path / "source")
    model, report = shrink(source, CUT, "select")
    small = save(model, tmp_path / "small", report=report, source=source)
    out = tmp_path / "recovered"
    (out / "1_Pooling").mkdir(parents=True)
    (out / "1_Pooling" / "config.json").write_text("{}")  # an earlier run's
    (out / "recover").mkdir()
    _write_model(load_model(small), small, out, {"steps": 0})
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 16
    assert st_files(out) == ST_FILES and (out / "recover").is_dir()
