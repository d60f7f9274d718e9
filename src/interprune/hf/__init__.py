"""Everything that knows about Hugging Face: configs and their rebuild (``config``), model classes, builds,
loads and saves (``models``), processors and tokenizers (``processors``), dummy inputs (``inputs``), and the
other files that travel beside the weights (``source_files``, ``generation``, ``sentence``)."""
