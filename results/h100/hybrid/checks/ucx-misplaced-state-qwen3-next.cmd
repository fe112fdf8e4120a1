# kvxfer-send -t ucx -m qwen3-next-80b-a3b -p 8192 -g block -n 3 --fault misplaced-state
