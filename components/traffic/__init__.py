"""Served traffic: captured requests, reference profiles, windows and the drift tests over them."""
