# kvxfer-send -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b -p 1024,8192 -g block -n 5 -w 1 --prefill-tflops 809 --overlap layer
