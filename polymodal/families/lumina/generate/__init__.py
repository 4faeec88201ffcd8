"""Generation with a model of the image–text family: prompts in the training format (``prompts``), the sampler —
images of a requested size with classifier-free guidance and structure forcing, text until the end of the turn
(``sampler``) — and ``polymodal generate`` (``run``, with its PNG sheet: ``grid``). Imports nothing on its own:
``settings`` is read by the command's ``--help`` without torch."""
