"""Weight-name and layout mappings between megatron-core ``GPTModel`` (TP1/PP1) and Hugging Face models.

One module per family: ``llama`` (Yi, and Baichuan2 written as Llama) and ``baichuan2`` (Baichuan's own
``W_pack`` layout). Both work tensor by tensor through a getter, so callers can stream from ``safe_open``.
"""
