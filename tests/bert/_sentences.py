"""The sentences the MiniLM tests embed (also read by make_hf_reference.py)."""

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "Hello!",
    "Model compression makes neural networks smaller and faster without losing much accuracy.",
    "Ünïcödé façade — naïve café; 東京は日本の首都です。",
    "Is this the real life? Is this just fantasy?",
    "1234 5678 90 #hashtag @mention http://example.com/a?b=c",
    "Pruning, quantization, distillation and low-rank factorisation compose.",
]
