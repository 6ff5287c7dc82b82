"""DNA and RNA sequence encoders, sharing one alphabet policy (alphabet.py) and one rule for sequences longer than
a model (windows.py):

    kmer:<k>                  k-mer spectrum (normalised counts, optional TF-IDF): weight-free, fast (kmer.py)
    tiara                     tiara's pretrained 6-mer TF-IDF + MLP (PyPI tiara==1.0.2): its 1024-d hidden layer
    hf-dna:<dir or id>[@rev]  a Hugging Face DNA language model (hf_dna.py)

Skipping, not failing, keeps the good records of a large file and loses nothing silently: a sequence the
alphabet policy cannot read is recorded as skipped with the character and its position.
"""
