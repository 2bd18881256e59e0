"""One module per engine; each imports its engine's client only when it is used."""
