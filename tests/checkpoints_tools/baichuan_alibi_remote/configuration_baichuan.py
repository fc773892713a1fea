"""Test stand-in for Baichuan2-13B's remote ``configuration_baichuan.py`` (the released one is not available
offline): the config fields our export writes."""
from transformers import PretrainedConfig


class BaichuanConfig(PretrainedConfig):
    model_type = "baichuan"

    def __init__(self, vocab_size=125696, hidden_size=5120, intermediate_size=13696, num_hidden_layers=40,
                 num_attention_heads=40, rms_norm_eps=1e-6, model_max_length=4096, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.rms_norm_eps = rms_norm_eps
        self.model_max_length = model_max_length
        super().__init__(**kwargs)
