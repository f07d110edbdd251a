# fp8raw without either product (the memory pipeline alone, as fp8none).
bash /work/main/docs/experiments/s17-fp8raw.sed.sh && bash /work/main/docs/experiments/s17-fp8none.sed.sh
