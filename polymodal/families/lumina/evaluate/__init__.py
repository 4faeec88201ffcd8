"""``polymodal eval`` for the image–text family: captioning and text-to-image on held-out synthetic scenes."""
