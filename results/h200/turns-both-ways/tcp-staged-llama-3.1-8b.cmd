# kvxfer-send -t tcp -m llama-3.1-8b --turns 10 --turn-tokens 1000 --multi-turn full,delta,bidirectional,d-direct -g layer,block -n 5 -w 1
