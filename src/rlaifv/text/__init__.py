"""Text rules with no model behind them: what a claim splitter reads and writes.

    rules.py     the 'rules' splitter: simple English -> self-contained statements -> yes/no questions
    formats.py   the two-call LLM splitter's prompts and numbered lists, and the strict readers of its outputs

Pure string functions: the feedback stage splits with them, and the synthetic world trains its splitter LM on their
output, so they sit below both.
"""
