"""Labels of one cell: give a new one (it supersedes the current one), read the history."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.api.cells import LabelSerializer
from annotation.api.common import Diff14Field, InputSerializer, request_user
from annotation.api.permissions import EVERYONE, LABELLERS, Roles
from annotation.selectors.cells import cell_label_history
from annotation.services.labels import cell_label_create


class CellLabelsApi(APIView):
    """GET: every label the cell has had, oldest first. POST: a person's new label."""

    permission_classes = [Roles(GET=EVERYONE, POST=LABELLERS)]

    class LabelCreateInputSerializer(InputSerializer):
        code = Diff14Field(help_text="the 14-Diff class")

    @extend_schema(responses=LabelSerializer(many=True))
    def get(self, request: Request, cell_id: int) -> Response:
        history = cell_label_history(cell_id=cell_id, user=request_user(request))
        return Response(LabelSerializer(history, many=True).data)

    @extend_schema(request=LabelCreateInputSerializer, responses={201: LabelSerializer})
    def post(self, request: Request, cell_id: int) -> Response:
        data = self.LabelCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        label = cell_label_create(
            cell_id=cell_id, code=data.validated_data["code"], annotator=request_user(request)
        )
        return Response(LabelSerializer(label).data, status=status.HTTP_201_CREATED)
