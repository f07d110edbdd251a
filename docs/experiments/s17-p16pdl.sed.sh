# p16 and pdl together.
bash /work/main/docs/experiments/s17-p16.sed.sh && bash /work/main/docs/experiments/s17-pdl.sed.sh
