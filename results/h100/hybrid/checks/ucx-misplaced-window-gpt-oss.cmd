# kvxfer-send -t ucx -m gpt-oss-120b -p 8192 -g layer -n 3 --fault misplaced-state
