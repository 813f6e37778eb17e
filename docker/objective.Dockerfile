# The image of a user's objective: hpo's image, the user's folder at /objective, its
# requirements.txt installed (docs/kubernetes.md, "Your own objective"):
#   docker build -f docker/objective.Dockerfile -t my-objective:1 ./my-objective
# docker-compose.objective.yml holds the same instructions inline (tests/test_containers.py
# checks that they do not drift apart).
ARG HPO_IMAGE=hpo:local
FROM ${HPO_IMAGE}
USER root
COPY . /objective
# requirements.txt, if any: from wheels/ in the folder when there is one (offline:
# `pip wheel -r requirements.txt -w wheels` beside it), else from the package index
RUN if [ -f /objective/requirements.txt ]; then \
      if [ -d /objective/wheels ]; then \
        pip install --no-cache-dir --no-index --find-links /objective/wheels \
          -r /objective/requirements.txt; \
      else \
        pip install --no-cache-dir -r /objective/requirements.txt; \
      fi; \
    fi \
    && chmod -R a+rX,go-w /objective
USER 10001:10001
ENV HPO_CODE_DIR=/objective
