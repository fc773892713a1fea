"""megatron-huatuo: HuatuoGPT-II one-stage medical adaptation on Megatron-Core."""
