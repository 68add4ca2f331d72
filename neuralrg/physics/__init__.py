"""Lattice physics: targets behind one protocol (``target.LatticeTarget``), exact solutions,
observables and estimators. No flow, Lightning or hydra import here."""
