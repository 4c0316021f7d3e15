"""Stage sample: masks (real and deformed) through a trained generator, in several styles; the
public :func:`cardigan.generate`."""
