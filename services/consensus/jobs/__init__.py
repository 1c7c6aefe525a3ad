"""Jobs: authorised computations over listed assets, their attestations and their outcome."""
