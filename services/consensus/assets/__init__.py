"""Assets: data listings (metadata, level, allowed operations, price, data commitment) and their versions."""
