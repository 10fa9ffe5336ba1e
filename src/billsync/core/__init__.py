"""The pure core: catalog, money, periods, rating and folding. No I/O, no clock, no session."""
