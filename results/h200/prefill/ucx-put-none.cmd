# kvxfer-send -t ucx --ucx-op put --ucx-err-mode none -m llama-3.1-8b -p 1024,2048,4096,8192,16384,32768 -g layer -n 8 -w 2 --prefill-tflops 809 --overlap none
