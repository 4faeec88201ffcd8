"""Image tokenizers: convolutional encoder/decoder with a VQ or FSQ quantizer per modality, and their evaluation."""
