"""Turning episode records into numbers, tables and plots."""
