"""4M: any-to-any masked multimodal modelling — modalities, masking, data, model, upstream import, loss,
pre-tokenization, chained generation, evaluation and the family's verbs."""
