"""Test campaigns (crash and dependency-fault injection): test tooling, not part of the installed package."""
