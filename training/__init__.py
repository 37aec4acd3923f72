"""Training of studio-tiny, the small embedded model: data, tokenizer, models, training, evaluation."""
