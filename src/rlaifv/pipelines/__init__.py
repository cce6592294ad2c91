"""Compositions of stages: what a command runs end to end. A pipeline computes nothing itself.

    collect.py     `rlaifv collect`: prompts -> candidates -> claims -> verdicts -> pairs (moves 1-2)
    best_of_n.py   `rlaifv bon`: prompts -> N samples -> the aligned policy's own reward -> the best answer (move 4)
    selection.py   which checkpoint of a round becomes the next round's policy
    loop.py        `rlaifv iterate`: rounds of collect -> reference log-probs -> DPO -> selection (move 3)
    world_bon.py   best-of-N on the world's test split, by N and by the reward's form
    demo.py        `rlaifv demo`: the world bootstrapped, rounds, evaluation and best-of-N in one report
"""
